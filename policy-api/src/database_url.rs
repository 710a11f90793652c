//! The database URL: kept out of logs and `Debug` output, and checked for a TLS mode that
//! can be silently downgraded.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A database URL, which may hold a password: `Debug` shows it with the password replaced.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl From<&str> for DatabaseUrl {
    fn from(s: &str) -> Self {
        DatabaseUrl(s.to_string())
    }
}

/// `url` with its password, if any, replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) if u.has_host() || !url.contains('@') => url.to_string(),
        // Not a URL with a host (a typo such as a missing `//`): hide all before any `@`.
        _ => match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_string(),
        },
    }
}

/// How a connection to the database is protected, as its URL asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPosture {
    /// SQLite, a Unix socket or a loopback address: nothing crosses a network.
    Local,
    /// TLS with the server's certificate checked (`verify-ca`/`verify-full`,
    /// `VERIFY_CA`/`VERIFY_IDENTITY`).
    Verified,
    /// TLS without checking who answers (`require`/`REQUIRED`): encrypted, but open to a
    /// man in the middle.
    Unverified,
    /// Plain text by the operator's explicit choice (`disable`/`DISABLED`).
    Plain,
    /// TLS only if the server offers it (`prefer`/`allow`, `PREFERRED`, and the drivers'
    /// default when the URL names no mode): anyone on the path can strip it.
    Opportunistic,
}

/// What the URL's TLS mode means; `Err` for a mode the driver would not understand.
pub fn tls_posture(url: &str) -> Result<TlsPosture, String> {
    let scheme = url.split(':').next().unwrap_or_default();
    let (key, postgres) = match scheme {
        "postgres" | "postgresql" => ("sslmode", true),
        "mysql" | "mariadb" => ("ssl-mode", false),
        _ => return Ok(TlsPosture::Local),
    };
    let parsed = url::Url::parse(url).map_err(|_| format!("the database URL {} does not parse", redact_url(url)))?;
    let query =
        |name: &str| parsed.query_pairs().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.into_owned());
    let local = match parsed.host() {
        None => true,
        // Non-special schemes keep hosts opaque, so an IP address arrives here as text.
        Some(url::Host::Domain(d)) => {
            let d = d.trim_start_matches('[').trim_end_matches(']');
            d.eq_ignore_ascii_case("localhost")
                || d.starts_with('/')
                || d.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
    } || query("host").is_some_and(|h| h.starts_with('/'))
        || query("socket").is_some();
    let mode = query(key).map(|m| m.to_ascii_lowercase().replace('_', "-"));
    let posture = match (postgres, mode.as_deref()) {
        (_, None) => TlsPosture::Opportunistic,
        (true, Some("prefer" | "allow")) | (false, Some("preferred")) => TlsPosture::Opportunistic,
        (true, Some("disable")) | (false, Some("disabled")) => TlsPosture::Plain,
        (true, Some("require")) | (false, Some("required")) => TlsPosture::Unverified,
        (true, Some("verify-ca" | "verify-full")) | (false, Some("verify-ca" | "verify-identity")) => {
            TlsPosture::Verified
        }
        (_, Some(other)) => {
            let known = if postgres {
                "disable, allow, prefer, require, verify-ca, verify-full"
            } else {
                "DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
            };
            return Err(format!("the database URL's {key}={other:?} is not one of {known}"));
        }
    };
    Ok(if local { TlsPosture::Local } else { posture })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TlsPosture::*;

    #[test]
    fn postures() {
        for (url, want) in [
            ("sqlite:///var/vcap/store/c2c/policy-server.db?mode=rwc", Local),
            ("sqlite::memory:", Local),
            ("postgres://u:p@127.0.0.1/db", Local),
            ("postgres://u@localhost:5432/db?sslmode=prefer", Local),
            ("postgres://u@[::1]/db", Local),
            ("postgres:///db?host=/var/run/postgresql", Local),
            ("mysql://root@127.0.0.1:3306/db", Local),
            ("postgres://u@db.example.com/db", Opportunistic),
            ("postgres://u@10.0.0.5/db?sslmode=prefer", Opportunistic),
            ("postgresql://u@10.0.0.5/db?sslmode=allow", Opportunistic),
            ("postgres://u@10.0.0.5/db?sslmode=require", Unverified),
            ("postgres://u@10.0.0.5/db?sslmode=disable", Plain),
            ("postgres://u@db.example.com/db?sslmode=verify-full&sslrootcert=/ca.pem", Verified),
            ("postgres://u@db.example.com/db?SSLMODE=verify-ca", Verified),
            ("mysql://u@db.example.com/db", Opportunistic),
            ("mysql://u@db.example.com/db?ssl-mode=PREFERRED", Opportunistic),
            ("mysql://u@db.example.com/db?ssl-mode=REQUIRED", Unverified),
            ("mysql://u@db.example.com/db?ssl-mode=DISABLED", Plain),
            ("mysql://u@db.example.com/db?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem", Verified),
            ("mariadb://u@db.example.com/db?ssl-mode=verify_ca", Verified),
        ] {
            assert_eq!(tls_posture(url), Ok(want), "{url}");
        }
    }

    #[test]
    fn unknown_modes_are_errors_without_the_password() {
        let e = tls_posture("postgres://u:hunter2@db.example.com/db?sslmode=maybe").unwrap_err();
        assert!(e.contains("sslmode=\"maybe\"") && e.contains("verify-full"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = tls_posture("mysql://u@db.example.com/db?ssl-mode=on").unwrap_err();
        assert!(e.contains("VERIFY_IDENTITY"), "{e}");
    }

    #[test]
    fn debug_hides_the_password() {
        let u = DatabaseUrl("postgres://u:hunter2@db.example.com/db".into());
        assert!(!format!("{u:?}").contains("hunter2"));
    }
}
