//! Cloud Controller v3 lookups (app → space, a user's space-developer roles), made with the
//! server's own UAA client-credentials token. Answers are cached for `cache_ttl` (default
//! 10 s) so a burst of requests by one user costs Cloud Controller one lookup.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use serde::Deserialize;

/// Cloud Controller's `/v3/apps` answers at most this many guids per page in our requests.
const CHUNK: usize = 100;

#[derive(Debug, thiserror::Error, Clone)]
pub enum CcError {
    #[error("getting a client token from UAA failed: {0}")]
    Token(String),
    #[error("Cloud Controller request failed: {0}")]
    Request(String),
}

/// The server's own token from UAA (client_credentials), reused until shortly before expiry.
pub struct ClientToken {
    uaa: uaa_client::Uaa,
    cached: std::sync::Mutex<Option<(String, Instant, Vec<String>)>>,
}

/// Scopes that let the server see every app in Cloud Controller.
const ADMIN_READ_SCOPES: [&str; 3] =
    ["cloud_controller.admin_read_only", "cloud_controller.admin", "cloud_controller.global_auditor"];

impl ClientToken {
    pub fn new(
        http: reqwest::Client,
        uaa_url: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Self, uaa_client::UaaError> {
        Ok(ClientToken {
            uaa: uaa_client::Uaa::new(http, uaa_url, client_id, client_secret)?,
            cached: std::sync::Mutex::new(None),
        })
    }

    pub async fn get(&self) -> Result<String, CcError> {
        self.current().await.map(|(token, _)| token)
    }

    /// The token and its granted scopes.
    /// No lock is held across the call to UAA: a slow UAA delays only the callers that need
    /// a new token, and two of them may fetch one each.
    async fn current(&self) -> Result<(String, Vec<String>), CcError> {
        if let Some((token, until, scopes)) = self.cached.lock().expect("token cache lock").as_ref()
            && Instant::now() < *until
        {
            return Ok((token.clone(), scopes.clone()));
        }
        let grant = self.uaa.client_credentials().await.map_err(|e| CcError::Token(e.to_string()))?;
        // Renew a minute early so a token never expires on its way to Cloud Controller.
        let lifetime = grant.expires_in.unwrap_or_default().saturating_sub(Duration::from_secs(60));
        *self.cached.lock().expect("token cache lock") =
            Some((grant.access_token.clone(), Instant::now() + lifetime, grant.scopes.clone()));
        Ok((grant.access_token, grant.scopes))
    }

    /// Forgets the cached token (Cloud Controller refused it: revoked, or UAA's keys rotated).
    pub fn invalidate(&self) {
        *self.cached.lock().expect("token cache lock") = None;
    }
}

#[derive(Deserialize)]
struct Page<T> {
    pagination: Pagination,
    resources: Vec<T>,
}

#[derive(Deserialize)]
struct Pagination {
    next: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
}

#[derive(Deserialize)]
struct AppResource {
    guid: String,
    relationships: AppRelationships,
}

#[derive(Deserialize)]
struct AppRelationships {
    space: ToOne,
}

#[derive(Deserialize)]
struct ToOne {
    data: Option<GuidRef>,
}

#[derive(Deserialize)]
struct GuidRef {
    guid: String,
}

#[derive(Deserialize)]
struct RoleResource {
    relationships: RoleRelationships,
}

#[derive(Deserialize)]
struct RoleRelationships {
    space: Option<ToOne>,
}

pub struct CloudController {
    http: reqwest::Client,
    base: String,
    token: ClientToken,
    app_spaces: Cache<String, String>,
    /// Guids Cloud Controller does not know, apart so that a flood of made-up ids cannot
    /// evict the apps that exist.
    unknown_apps: Cache<String, ()>,
    developer_spaces: Cache<String, Arc<HashSet<String>>>,
    space_apps: Cache<String, Arc<HashSet<String>>>,
    /// Batches of guids being looked up right now, so that identical concurrent lookups
    /// (the same create sent by many clients, or retried) share one request. An entry lives
    /// only while its request runs; the answers then live in `app_spaces`/`unknown_apps`.
    app_batches: Cache<String, Arc<HashMap<String, String>>>,
}

impl CloudController {
    pub fn new(http: reqwest::Client, base: &str, token: ClientToken, cache_ttl: Duration) -> Self {
        CloudController {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            app_spaces: Cache::builder().max_capacity(200_000).time_to_live(cache_ttl).build(),
            unknown_apps: Cache::builder().max_capacity(50_000).time_to_live(cache_ttl).build(),
            developer_spaces: Cache::builder().max_capacity(50_000).time_to_live(cache_ttl).build(),
            space_apps: Cache::builder().max_capacity(50_000).time_to_live(cache_ttl).build(),
            app_batches: Cache::builder().max_capacity(10_000).time_to_live(cache_ttl).build(),
        }
    }

    /// GETs every page of a v3 listing. Only `next` links on our own Cloud Controller are
    /// followed.
    async fn all_pages<T: for<'de> Deserialize<'de>>(&self, first: String) -> Result<Vec<T>, CcError> {
        let mut token = self.token.get().await?;
        let mut url = first;
        let mut out = Vec::new();
        let mut renewed = false;
        loop {
            let started = Instant::now();
            let resp = self
                .http
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, bearer_header(&token)?)
                .send()
                .await
                .map_err(|e| CcError::Request(e.to_string()))?;
            metrics::histogram!("c2c_cloud_controller_request_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            // A refused token is dropped and a new one tried once.
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                self.token.invalidate();
                token = self.token.get().await?;
                renewed = true;
                continue;
            }
            if !resp.status().is_success() {
                return Err(CcError::Request(format!("GET {} answered {}", path_of(&url), resp.status())));
            }
            let page: Page<T> = resp.json().await.map_err(|e| CcError::Request(format!("bad answer: {e}")))?;
            out.extend(page.resources);
            match page.pagination.next {
                Some(next) if same_origin(&self.base, &next.href) => url = next.href,
                Some(next) => {
                    return Err(CcError::Request(format!(
                        "refusing to follow a next link off {}: {}",
                        self.base, next.href
                    )));
                }
                None => return Ok(out),
            }
        }
    }

    /// The space of each app that exists; apps Cloud Controller does not know are absent.
    /// With `fresh`, the cache is bypassed (the stale-policy cleanup must see the truth).
    pub async fn app_spaces(&self, apps: &[String], fresh: bool) -> Result<HashMap<String, String>, CcError> {
        let mut out = HashMap::new();
        let mut lookup = Vec::new();
        for app in apps.iter().collect::<HashSet<_>>() {
            if !fresh {
                if let Some(space) = self.app_spaces.get(app).await {
                    out.insert(app.clone(), space);
                    continue;
                }
                if self.unknown_apps.contains_key(app) {
                    continue;
                }
            }
            lookup.push(app.clone());
        }
        lookup.sort();
        for chunk in lookup.chunks(CHUNK) {
            let found = if fresh {
                self.fetch_app_batch(chunk).await?
            } else {
                let key = chunk.join(",");
                let found = self
                    .app_batches
                    .try_get_with(key.clone(), self.fetch_app_batch(chunk))
                    .await
                    .map_err(|e: Arc<CcError>| (*e).clone())?;
                self.app_batches.invalidate(&key).await;
                found
            };
            out.extend(found.iter().map(|(app, space)| (app.clone(), space.clone())));
        }
        Ok(out)
    }

    /// One `GET /v3/apps?guids=` (all its pages), remembered per app.
    async fn fetch_app_batch(&self, chunk: &[String]) -> Result<Arc<HashMap<String, String>>, CcError> {
        let mut url =
            url::Url::parse(&format!("{}/v3/apps", self.base)).map_err(|e| CcError::Request(e.to_string()))?;
        url.query_pairs_mut().append_pair("guids", &chunk.join(",")).append_pair("per_page", &CHUNK.to_string());
        let found: Vec<AppResource> = self.all_pages(url.to_string()).await?;
        // Only the guids asked for count: an answer for another guid (a case variant on a
        // case-insensitive database, or a confused proxy) must not vouch for an id.
        let asked: HashSet<&String> = chunk.iter().collect();
        let mut out = HashMap::new();
        for app in found.into_iter().filter(|a| asked.contains(&a.guid)) {
            if let Some(space) = app.relationships.space.data {
                self.app_spaces.insert(app.guid.clone(), space.guid.clone()).await;
                out.insert(app.guid, space.guid);
            }
        }
        for app in chunk.iter().filter(|a| !out.contains_key(*a)) {
            self.unknown_apps.insert(app.clone(), ()).await;
        }
        Ok(Arc::new(out))
    }

    /// Spaces where `user` (a user GUID or client id) is a space developer. Concurrent
    /// lookups for one user share one request.
    pub async fn developer_spaces(&self, user: &str) -> Result<Arc<HashSet<String>>, CcError> {
        self.developer_spaces
            .try_get_with(user.to_string(), async {
                let mut url =
                    url::Url::parse(&format!("{}/v3/roles", self.base)).map_err(|e| CcError::Request(e.to_string()))?;
                url.query_pairs_mut()
                    .append_pair("types", "space_developer")
                    .append_pair("user_guids", user)
                    .append_pair("per_page", "5000");
                let roles: Vec<RoleResource> = self.all_pages(url.to_string()).await?;
                let spaces =
                    roles.into_iter().filter_map(|r| r.relationships.space.and_then(|s| s.data).map(|d| d.guid));
                Ok(Arc::new(spaces.collect()))
            })
            .await
            .map_err(|e: Arc<CcError>| (*e).clone())
    }

    /// Every app in `user`'s developer spaces: what a non-admin listing may show. Its cost
    /// depends on the caller's spaces, not on the size of the policy table. Concurrent
    /// lookups for one user share one request.
    pub async fn developer_apps(&self, user: &str) -> Result<Arc<HashSet<String>>, CcError> {
        let spaces = self.developer_spaces(user).await?;
        self.space_apps
            .try_get_with(user.to_string(), async {
                let mut spaces: Vec<&String> = spaces.iter().collect();
                spaces.sort();
                let mut apps = HashSet::new();
                for chunk in spaces.chunks(CHUNK) {
                    let mut url = url::Url::parse(&format!("{}/v3/apps", self.base))
                        .map_err(|e| CcError::Request(e.to_string()))?;
                    let chunk: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
                    url.query_pairs_mut().append_pair("space_guids", &chunk.join(",")).append_pair("per_page", "5000");
                    let found: Vec<AppResource> = self.all_pages(url.to_string()).await?;
                    // Only apps that really are in one of the asked spaces count.
                    apps.extend(
                        found
                            .into_iter()
                            .filter(|a| {
                                a.relationships.space.data.as_ref().is_some_and(|s| chunk.contains(&s.guid.as_str()))
                            })
                            .map(|a| a.guid),
                    );
                }
                Ok(Arc::new(apps))
            })
            .await
            .map_err(|e: Arc<CcError>| (*e).clone())
    }
}

impl CloudController {
    /// Whether the server's own token may read every app (the cleanup needs it).
    pub async fn has_admin_read(&self) -> Result<bool, CcError> {
        let (_, scopes) = self.token.current().await?;
        Ok(scopes.iter().any(|s| ADMIN_READ_SCOPES.contains(&s.as_str())))
    }

    /// Every security group (v3), as raw resources.
    pub async fn security_groups(&self) -> Result<Vec<serde_json::Value>, CcError> {
        self.all_pages(format!("{}/v3/security_groups?per_page=5000", self.base)).await
    }
}

/// The `Authorization` header for `token`, marked sensitive so it never shows in debug
/// output or HTTP/2 header tables.
fn bearer_header(token: &str) -> Result<reqwest::header::HeaderValue, CcError> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("bearer {token}"))
        .map_err(|_| CcError::Token("UAA issued a token that is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Whether `link` is on Cloud Controller itself (`base`): same scheme, host and port, and
/// under its path. A prefix test on the string would accept `https://api.example.com.evil/`.
fn same_origin(base: &str, link: &str) -> bool {
    let (Ok(base), Ok(link)) = (url::Url::parse(base), url::Url::parse(link)) else { return false };
    base.scheme() == link.scheme()
        && base.host_str() == link.host_str()
        && base.port_or_known_default() == link.port_or_known_default()
        && link.username().is_empty()
        && link.path().starts_with(base.path().trim_end_matches('/'))
}

fn path_of(url: &str) -> String {
    url::Url::parse(url).map(|u| u.path().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_stay_on_cloud_controller() {
        let base = "https://api.example.com";
        assert!(same_origin(base, "https://api.example.com/v3/apps?page=2"));
        assert!(same_origin("https://api.example.com:443/", "https://api.example.com/v3/apps?page=2"));
        for evil in [
            "https://api.example.com.evil/v3/apps?page=2",
            "https://api.example.com@evil.example/v3/apps",
            "https://evil.example/https://api.example.com/v3/apps",
            "http://api.example.com/v3/apps?page=2",
            "https://api.example.com:8443/v3/apps",
            "https://user@api.example.com/v3/apps",
            "not a url",
        ] {
            assert!(!same_origin(base, evil), "{evil}");
        }
        assert!(!same_origin("https://cf.example/cc", "https://cf.example/other/v3/apps"));
    }

    #[test]
    fn the_token_header_is_sensitive() {
        let h = bearer_header("abc").unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("abc"));
        assert!(bearer_header("a\nb").is_err());
    }
}
