//! Who is calling: UAA access tokens, verified locally against UAA's `/token_keys` (RS256 or
//! ES256, keys cached by `kid`), or by UAA's `/check_token` for operators who need revocation
//! to take effect at once. Tokens never reach a log line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

pub const ADMIN_SCOPE: &str = "network.admin";
pub const WRITE_SCOPE: &str = "network.write";

/// What the server knows about a caller once the token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`: the user's GUID, or the client id for client-credentials tokens.
    pub subject_id: String,
    pub user_name: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == ADMIN_SCOPE)
    }

    /// `user_name` when present, else `sub` (whoami's answer).
    pub fn display_name(&self) -> &str {
        self.user_name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&self.subject_id)
    }
}

/// Why a token was refused. The HTTP answer is always upstream's
/// `failed to verify token with uaa`; the variant goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token is not a valid JWT: {0}")]
    Malformed(String),
    #[error("token signed with algorithm {0:?}, which UAA keys do not use")]
    Algorithm(String),
    #[error("no UAA signing key with kid {0:?}")]
    UnknownKey(String),
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("UAA unreachable or answered badly: {0}")]
    Uaa(String),
}

#[derive(Deserialize)]
struct TokenClaims {
    sub: String,
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

impl From<TokenClaims> for Identity {
    fn from(c: TokenClaims) -> Self {
        Identity { subject_id: c.sub, user_name: c.user_name, client_id: c.client_id, scopes: c.scope }
    }
}

/// How tokens are checked.
#[derive(Clone)]
pub enum Verifier {
    Jwks(Arc<JwksVerifier>),
    Introspection(Arc<Introspection>),
}

impl Verifier {
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let identity = match self {
            Verifier::Jwks(v) => v.verify(token).await,
            Verifier::Introspection(v) => v.verify(token).await,
        }?;
        // The subject goes into Cloud Controller's `user_guids=` filter, where a comma would
        // make one user read as several.
        if let Some(why) =
            crate::ids::problem(&identity.subject_id).or(identity.subject_id.is_empty().then_some("empty"))
        {
            return Err(AuthError::Rejected(format!("token subject is {why}")));
        }
        Ok(identity)
    }
}

struct CachedKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// UAA's keys by `kid`, and when they were fetched.
type KeyCache = (HashMap<String, Arc<CachedKey>>, Option<Instant>);

/// Local verification against UAA's published keys.
pub struct JwksVerifier {
    http: reqwest::Client,
    token_keys_url: String,
    issuer: String,
    keys: RwLock<KeyCache>,
    last_fetch: Mutex<Option<Instant>>,
    min_refetch: Duration,
    key_ttl: Duration,
    audience: Option<String>,
}

/// How the JWT verifier treats UAA's keys and tokens' audiences.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Rate limit of fetches caused by unknown `kid`s.
    pub min_refetch: Duration,
    /// Keys older than this are fetched again, so a key withdrawn from UAA stops working.
    pub key_ttl: Duration,
    /// When set, tokens must name it in `aud`.
    pub audience: Option<String>,
}

impl JwksVerifier {
    /// `settings.min_refetch` rate-limits key fetches caused by unknown `kid`s, so a flood of
    /// tokens with made-up kids cannot turn into a flood of requests to UAA.
    pub fn new(http: reqwest::Client, uaa_url: &str, issuer: &str, settings: JwksSettings) -> Self {
        JwksVerifier {
            http,
            token_keys_url: format!("{}/token_keys", uaa_url.trim_end_matches('/')),
            issuer: issuer.to_string(),
            keys: RwLock::new((HashMap::new(), None)),
            last_fetch: Mutex::new(None),
            min_refetch: settings.min_refetch,
            key_ttl: settings.key_ttl,
            audience: settings.audience,
        }
    }

    /// The cached key `kid` while the cache is fresh; otherwise after a fetch (rate-limited).
    /// When UAA cannot be reached for a refresh, the keys it last published keep working.
    async fn key(&self, kid: &str) -> Result<Arc<CachedKey>, AuthError> {
        let fresh = |fetched: Option<Instant>| fetched.is_some_and(|t| t.elapsed() < self.key_ttl);
        {
            let keys = self.keys.read().await;
            if let Some(k) = keys.0.get(kid)
                && fresh(keys.1)
            {
                return Ok(k.clone());
            }
        }
        {
            let mut last = self.last_fetch.lock().await;
            // Another request may have fetched while this one waited for the lock.
            {
                let keys = self.keys.read().await;
                if let Some(k) = keys.0.get(kid)
                    && fresh(keys.1)
                {
                    return Ok(k.clone());
                }
            }
            let due = last.is_none_or(|t| t.elapsed() >= self.min_refetch);
            if due {
                *last = Some(Instant::now());
                if let Err(e) = self.fetch().await {
                    if self.keys.read().await.0.is_empty() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "refreshing UAA token keys failed; the last ones stay in use");
                }
            }
        }
        self.keys.read().await.0.get(kid).cloned().ok_or_else(|| AuthError::UnknownKey(kid.to_string()))
    }

    async fn fetch(&self) -> Result<(), AuthError> {
        metrics::counter!("c2c_uaa_token_keys_fetches_total").increment(1);
        let resp = self.http.get(&self.token_keys_url).send().await.map_err(|e| AuthError::Uaa(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(AuthError::Uaa(format!("GET /token_keys answered {}", resp.status())));
        }
        let set: JwkSet = resp.json().await.map_err(|e| AuthError::Uaa(format!("bad /token_keys body: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Some(alg) = key_algorithm(jwk) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, Arc::new(CachedKey { key, alg }));
            }
        }
        tracing::info!(keys = keys.len(), "fetched UAA token keys");
        *self.keys.write().await = (keys, Some(Instant::now()));
        Ok(())
    }

    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.unwrap_or_else(|| "legacy-token-key".to_string());
        let key = self.key(&kid).await?;
        if key.alg != header.alg {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key.key, &validation)
            .map_err(|e| AuthError::Rejected(e.to_string()))?;
        Ok(data.claims.into())
    }
}

fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        // UAA always names the algorithm; a key without one is taken by its type.
        None => match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Some(Algorithm::ES256),
            _ => None,
        },
        _ => None,
    }
}

/// Upstream's behaviour: ask UAA's `/check_token` about every token.
pub struct Introspection {
    http: reqwest::Client,
    url: String,
    client_id: String,
    client_secret: String,
}

#[derive(Deserialize)]
struct CheckTokenAnswer {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

impl Introspection {
    pub fn new(http: reqwest::Client, uaa_url: &str, client_id: &str, client_secret: &str) -> Self {
        Introspection {
            http,
            url: format!("{}/check_token", uaa_url.trim_end_matches('/')),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
        }
    }

    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let resp = self
            .http
            .post(&self.url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("token", token)])
            .send()
            .await
            .map_err(|e| AuthError::Uaa(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(AuthError::Rejected(format!("check_token answered {}", resp.status())));
        }
        let a: CheckTokenAnswer = resp.json().await.map_err(|e| AuthError::Uaa(e.to_string()))?;
        let subject_id = a.sub.or(a.user_id).or_else(|| a.client_id.clone()).unwrap_or_default();
        Ok(Identity { subject_id, user_name: a.user_name, client_id: a.client_id, scopes: a.scope })
    }
}

/// The token of an `Authorization` header: upstream strips `Bearer ` or `bearer ` only.
pub fn bearer(header: &str) -> &str {
    header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).unwrap_or(header)
}

/// Go's `%v` of a string slice: `[a b]`.
pub fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Upstream's scope refusal message.
pub fn scope_error(provided: &[String], allowed: &[&str]) -> String {
    let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    format!("provided scopes {} do not include allowed scopes {}", go_list(provided), go_list(&allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_prefixes() {
        assert_eq!(bearer("Bearer abc"), "abc");
        assert_eq!(bearer("bearer abc"), "abc");
        assert_eq!(bearer("BEARER abc"), "BEARER abc");
        assert_eq!(bearer("abc"), "abc");
    }

    #[test]
    fn scope_error_matches_upstream() {
        assert_eq!(
            scope_error(&[], &[ADMIN_SCOPE, WRITE_SCOPE]),
            "provided scopes [] do not include allowed scopes [network.admin network.write]"
        );
        assert_eq!(
            scope_error(&["network.write".into()], &[ADMIN_SCOPE]),
            "provided scopes [network.write] do not include allowed scopes [network.admin]"
        );
    }
}
