//! Typed client for the c2c policy server.
//!
//! Generated at build time from `openapi/policy-server.yaml` by progenitor; this file only adds
//! small conveniences on top. Every test and example that calls the API goes through it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = policy_client::Client::new_with_token("http://127.0.0.1:4002", "TOKEN")?;
//! let list = client.list_policies(None, None, None).await?;
//! println!("{} policies", list.total_policies);
//! # Ok(()) }
//! ```

#![allow(clippy::all, unused_imports, dead_code, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/codegen.rs"));
}

pub use generated::*;

impl Client {
    /// A client that sends `Authorization: Bearer <token>` with every request.
    pub fn new_with_token(baseurl: &str, token: &str) -> Result<Self, reqwest::Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ())
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()?;
        Ok(Self::new_with_client(baseurl, http))
    }
}

/// The message of a documented error answer (`{"error": "..."}`); `None` for transport or
/// decoding failures.
pub fn error_message(err: &Error<types::Error>) -> Option<&str> {
    match err {
        Error::ErrorResponse(resp) => Some(resp.error.as_str()),
        _ => None,
    }
}

/// The HTTP status of a failed call, when the server answered.
pub fn error_status<T>(err: &Error<T>) -> Option<u16> {
    err.status().map(|s| s.as_u16())
}

/// What a conditional request (`If-None-Match`, optionally with `wait`) came back with.
#[derive(Debug)]
pub enum Watched<T> {
    /// A new answer and its `ETag`.
    Changed { value: T, etag: Option<String> },
    /// `304 Not Modified`: the answer is still the one with the tag sent.
    NotModified,
}

/// Turns the result of a watchable call into [`Watched`]: a 304 is not an error.
pub fn watched<T>(result: Result<ResponseValue<T>, Error<types::Error>>) -> Result<Watched<T>, Error<types::Error>> {
    match result {
        Ok(resp) => {
            let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
            Ok(Watched::Changed { value: resp.into_inner(), etag })
        }
        Err(e) if e.status().map(|s| s.as_u16()) == Some(304) => Ok(Watched::NotModified),
        Err(e) => Err(e),
    }
}

impl types::Policy {
    /// A policy from `source` to `destination` on `protocol` ports `start..=end`.
    pub fn new(source: &str, destination: &str, protocol: types::Protocol, start: i32, end: i32) -> Self {
        types::Policy {
            source: types::Source { id: source.to_string(), tag: None },
            destination: types::Destination {
                id: destination.to_string(),
                tag: None,
                protocol,
                ports: types::Ports { start, end },
            },
        }
    }
}
