//! Which cell a client certificate speaks for on the cells' API. By default a cell's
//! certificate must name its underlay IP in a subject alternative name, and a cell may act
//! (leases, registrations) only for that address. `any_client_certificate` keeps
//! upstream's behaviour — any certificate of the CA acts for any cell — for drop-in use
//! with silk's certificates.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

/// The verified client certificate of a cells' API connection, put in every request of it.
#[derive(Debug, Clone, Default)]
pub struct ClientCert(pub Option<Arc<CertificateDer<'static>>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellIdentity {
    /// The certificate must hold the cell's underlay IP as an IP SAN.
    #[default]
    UnderlayIpSan,
    /// Upstream's: any certificate of the CA acts for any cell.
    AnyClientCertificate,
}

impl CellIdentity {
    /// Whether the holder of `cert` may act for the cell at `underlay_ip`.
    pub fn allows(self, cert: &ClientCert, underlay_ip: &str) -> bool {
        match self {
            CellIdentity::AnyClientCertificate => true,
            CellIdentity::UnderlayIpSan => {
                let (Some(der), Ok(ip)) = (cert.0.as_deref(), underlay_ip.parse::<Ipv4Addr>()) else { return false };
                names_ip(der, ip)
            }
        }
    }
}

/// Whether the (already verified) certificate names `ip` in a subject alternative name.
fn names_ip(der: &CertificateDer<'_>, ip: Ipv4Addr) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return false };
    let name = ServerName::IpAddress(IpAddr::V4(ip).into());
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str]) -> ClientCert {
        let params = rcgen_params(sans);
        ClientCert(Some(Arc::new(params)))
    }

    fn rcgen_params(sans: &[&str]) -> CertificateDer<'static> {
        let dir = std::env::temp_dir().join(format!("c2c-identity-{}-{}", std::process::id(), sans.join("_")));
        let ca = testkit::pki::TestCa::new(&dir, "ca");
        let files = ca.client_for("cell", sans);
        let der = CertificateDer::from_pem_file(&files.cert).unwrap();
        let _ = std::fs::remove_dir_all(dir);
        der
    }

    use rustls_pki_types::pem::PemObject;

    #[test]
    fn a_certificate_acts_only_for_the_ips_it_names() {
        let c = cert(&["10.0.0.1"]);
        let strict = CellIdentity::UnderlayIpSan;
        assert!(strict.allows(&c, "10.0.0.1"));
        assert!(!strict.allows(&c, "10.0.0.2"), "another cell");
        assert!(!strict.allows(&c, "10.0.0.1 "), "not an address");
        assert!(!strict.allows(&cert(&["cell-1"]), "10.0.0.1"), "a DNS name is no IP");
        assert!(!strict.allows(&ClientCert(None), "10.0.0.1"), "no certificate");
        assert!(CellIdentity::AnyClientCertificate.allows(&ClientCert(None), "10.0.0.2"));
    }
}
