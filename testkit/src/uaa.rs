//! A UAA double: issues real signed JWTs (password, client_credentials and refresh grants),
//! serves `/token_keys` and `/check_token` the way UAA does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::keys::{SigningAlg, SigningKey};
use crate::server::{Running, serve};

/// A user of the double: logs in with the password grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// An OAuth client of the double: the client_credentials grant gives it `authorities`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthClient {
    pub id: String,
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub authorities: Vec<String>,
}

/// The claims UAA puts into an access token (the subset anything here reads, plus the usual
/// extras so tokens look like UAA's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub jti: String,
    pub sub: String,
    pub scope: Vec<String>,
    pub client_id: String,
    pub cid: String,
    pub azp: String,
    pub grant_type: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub origin: Option<String>,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub zid: String,
    pub aud: Vec<String>,
}

/// What a test wants in a token; everything not set gets UAA's usual value.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// Lifetime in seconds from now; negative for a token that expired already.
    pub lifetime_secs: Option<i64>,
    pub issuer: Option<String>,
    pub kid: Option<String>,
    pub scopes: Option<Vec<String>>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

#[derive(Debug)]
struct Inner {
    users: RwLock<Vec<User>>,
    clients: RwLock<Vec<OAuthClient>>,
    keys: RwLock<Vec<SigningKey>>,
    refresh_tokens: RwLock<HashMap<String, Claims>>,
    issuer: RwLock<String>,
    token_lifetime: u64,
    check_token_calls: AtomicU64,
    token_keys_calls: AtomicU64,
    token_grants: AtomicU64,
}

/// A running UAA double. Cheap to clone; stops when the last clone of its `Running` is
/// dropped.
#[derive(Clone, Debug)]
pub struct Uaa {
    inner: Arc<Inner>,
    running: Arc<Running>,
}

/// Builds a [`Uaa`].
#[derive(Debug, Default)]
pub struct UaaBuilder {
    users: Vec<User>,
    clients: Vec<OAuthClient>,
    alg: Option<SigningAlg>,
    token_lifetime: Option<u64>,
    addr: Option<SocketAddr>,
}

impl UaaBuilder {
    pub fn user(mut self, name: &str, password: &str, scopes: &[&str]) -> Self {
        self.users.push(User {
            id: format!("{name}-guid"),
            name: name.to_string(),
            password: password.to_string(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    pub fn users(mut self, users: impl IntoIterator<Item = User>) -> Self {
        self.users.extend(users);
        self
    }

    pub fn client(mut self, id: &str, secret: &str, authorities: &[&str]) -> Self {
        self.clients.push(OAuthClient {
            id: id.to_string(),
            secret: secret.to_string(),
            authorities: authorities.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    pub fn clients(mut self, clients: impl IntoIterator<Item = OAuthClient>) -> Self {
        self.clients.extend(clients);
        self
    }

    pub fn signing(mut self, alg: SigningAlg) -> Self {
        self.alg = Some(alg);
        self
    }

    pub fn token_lifetime_secs(mut self, secs: u64) -> Self {
        self.token_lifetime = Some(secs);
        self
    }

    /// Listen here instead of an ephemeral loopback port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    pub async fn start(self) -> std::io::Result<Uaa> {
        let mut clients = self.clients;
        // The cf CLI logs in as client `cf` with an empty secret.
        if !clients.iter().any(|c| c.id == "cf") {
            clients.push(OAuthClient { id: "cf".into(), secret: String::new(), authorities: vec![] });
        }
        let key = SigningKey::generate("key-1", self.alg.unwrap_or(SigningAlg::Rs256));
        let inner = Arc::new(Inner {
            users: RwLock::new(self.users),
            clients: RwLock::new(clients),
            keys: RwLock::new(vec![key]),
            refresh_tokens: RwLock::new(HashMap::new()),
            issuer: RwLock::new(String::new()),
            token_lifetime: self.token_lifetime.unwrap_or(3600),
            check_token_calls: AtomicU64::new(0),
            token_keys_calls: AtomicU64::new(0),
            token_grants: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/oauth/token", post(token))
            .route("/token_keys", get(token_keys))
            .route("/token_key", get(token_key))
            .route("/check_token", post(check_token))
            .route("/login", get(|| async { Json(json!({"app": {"version": "77.0.0"}})) }))
            .with_state(inner.clone());
        let running = serve(router, self.addr).await?;
        *inner.issuer.write().expect("lock") = format!("{}/oauth/token", running.url());
        Ok(Uaa { inner, running: Arc::new(running) })
    }
}

impl Uaa {
    pub fn builder() -> UaaBuilder {
        UaaBuilder::default()
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.running.url()
    }

    /// The `iss` claim of the tokens it issues (`<url>/oauth/token`, as UAA).
    pub fn issuer(&self) -> String {
        self.inner.issuer.read().expect("lock").clone()
    }

    pub fn add_user(&self, name: &str, password: &str, scopes: &[&str]) -> User {
        let user = User {
            id: format!("{name}-guid"),
            name: name.to_string(),
            password: password.to_string(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
        self.inner.users.write().expect("lock").push(user.clone());
        user
    }

    /// Registers an OAuth client (client_credentials) on the running double.
    pub fn add_client(&self, id: &str, secret: &str, authorities: &[&str]) {
        self.inner.clients.write().expect("lock").push(OAuthClient {
            id: id.to_string(),
            secret: secret.to_string(),
            authorities: authorities.iter().map(|s| s.to_string()).collect(),
        });
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.inner.users.read().expect("lock").iter().find(|u| u.name == name).cloned()
    }

    /// Replaces the signing key with a new one under `kid` (key rotation). Old tokens no
    /// longer verify against `/token_keys`.
    pub fn rotate_key(&self, kid: &str) {
        let alg = self.inner.keys.read().expect("lock")[0].alg;
        *self.inner.keys.write().expect("lock") = vec![SigningKey::generate(kid, alg)];
    }

    pub fn check_token_calls(&self) -> u64 {
        self.inner.check_token_calls.load(Ordering::Relaxed)
    }

    pub fn token_keys_calls(&self) -> u64 {
        self.inner.token_keys_calls.load(Ordering::Relaxed)
    }

    pub fn token_grants(&self) -> u64 {
        self.inner.token_grants.load(Ordering::Relaxed)
    }

    /// An access token for a known user, as the password grant would give it.
    pub fn user_token(&self, name: &str) -> String {
        self.user_token_with(name, TokenRequest::default())
    }

    pub fn user_token_with(&self, name: &str, req: TokenRequest) -> String {
        let user = self.user(name).unwrap_or_else(|| panic!("UAA double has no user {name}"));
        let claims = self.inner.user_claims(&user, "cf", "password", &req);
        self.sign(&claims, req.kid.as_deref())
    }

    /// A refresh token for a known user, as `cf login` (a password grant by client `cf`)
    /// leaves one in the cf config.
    pub fn refresh_token(&self, name: &str) -> String {
        let user = self.user(name).unwrap_or_else(|| panic!("UAA double has no user {name}"));
        let claims = self.inner.user_claims(&user, "cf", "password", &TokenRequest::default());
        let refresh = format!("{}-r", uuid::Uuid::new_v4().simple());
        self.inner.refresh_tokens.write().expect("lock").insert(refresh.clone(), claims);
        refresh
    }

    /// An access token for a known client, as the client_credentials grant would give it.
    pub fn client_token(&self, id: &str) -> String {
        let client = self
            .inner
            .clients
            .read()
            .expect("lock")
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("UAA double has no client {id}"));
        let claims = self.inner.client_claims(&client, &TokenRequest::default());
        self.sign(&claims, None)
    }

    /// A token signed by the double's key with arbitrary claims (for negative tests).
    pub fn sign(&self, claims: &Claims, kid: Option<&str>) -> String {
        self.inner.sign(claims, kid)
    }

    /// A token with the same claims as a user's but signed by a key UAA never published.
    pub fn forged_user_token(&self, name: &str) -> String {
        let user = self.user(name).unwrap_or_else(|| panic!("UAA double has no user {name}"));
        let claims = self.inner.user_claims(&user, "cf", "password", &TokenRequest::default());
        let alg = self.inner.keys.read().expect("lock")[0].alg;
        let rogue = SigningKey::generate("key-1", alg);
        let mut header = Header::new(rogue.algorithm());
        header.kid = Some(rogue.kid.clone());
        jsonwebtoken::encode(&header, &claims, rogue.encoding_key()).expect("sign")
    }

    /// A token for a user whose header says `alg: none` and which carries no signature.
    pub fn unsigned_user_token(&self, name: &str) -> String {
        let user = self.user(name).unwrap_or_else(|| panic!("UAA double has no user {name}"));
        let claims = self.inner.user_claims(&user, "cf", "password", &TokenRequest::default());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        format!("{header}.{body}.")
    }

    /// Claims of a token the double issued, if its signature verifies.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        self.inner.verify(token)
    }
}

impl Inner {
    fn user_claims(&self, user: &User, client: &str, grant: &str, req: &TokenRequest) -> Claims {
        let iat = now();
        let lifetime = req.lifetime_secs.unwrap_or(self.token_lifetime as i64);
        Claims {
            jti: uuid::Uuid::new_v4().simple().to_string(),
            sub: user.id.clone(),
            scope: req.scopes.clone().unwrap_or_else(|| user.scopes.clone()),
            client_id: client.to_string(),
            cid: client.to_string(),
            azp: client.to_string(),
            grant_type: grant.to_string(),
            user_id: Some(user.id.clone()),
            user_name: Some(user.name.clone()),
            origin: Some("uaa".to_string()),
            iat,
            exp: (iat as i64 + lifetime).max(0) as u64,
            iss: req.issuer.clone().unwrap_or_else(|| self.issuer.read().expect("lock").clone()),
            zid: "uaa".to_string(),
            aud: vec!["network".into(), "cloud_controller".into(), client.to_string()],
        }
    }

    fn client_claims(&self, client: &OAuthClient, req: &TokenRequest) -> Claims {
        let iat = now();
        let lifetime = req.lifetime_secs.unwrap_or(self.token_lifetime as i64);
        Claims {
            jti: uuid::Uuid::new_v4().simple().to_string(),
            sub: client.id.clone(),
            scope: req.scopes.clone().unwrap_or_else(|| client.authorities.clone()),
            client_id: client.id.clone(),
            cid: client.id.clone(),
            azp: client.id.clone(),
            grant_type: "client_credentials".to_string(),
            user_id: None,
            user_name: None,
            origin: None,
            iat,
            exp: (iat as i64 + lifetime).max(0) as u64,
            iss: req.issuer.clone().unwrap_or_else(|| self.issuer.read().expect("lock").clone()),
            zid: "uaa".to_string(),
            aud: vec![client.id.clone()],
        }
    }

    fn sign(&self, claims: &Claims, kid: Option<&str>) -> String {
        let key = self.keys.read().expect("lock")[0].clone();
        let mut header = Header::new(key.algorithm());
        header.kid = Some(kid.unwrap_or(&key.kid).to_string());
        jsonwebtoken::encode(&header, claims, key.encoding_key()).expect("sign")
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        let key = self.keys.read().expect("lock")[0].clone();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk().clone()).ok()?;
        let decoding = DecodingKey::from_jwk(&jwk).ok()?;
        let mut validation = Validation::new(key.algorithm());
        validation.validate_aud = false;
        jsonwebtoken::decode::<Claims>(token, &decoding, &validation).ok().map(|d| d.claims)
    }

    fn client_from_basic(&self, headers: &HeaderMap) -> Option<OAuthClient> {
        let value = headers.get("authorization")?.to_str().ok()?;
        let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        self.clients.read().expect("lock").iter().find(|c| c.id == id && c.secret == secret).cloned()
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

async fn token(
    State(uaa): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Clients authenticate with Basic auth, or (as the cf CLI does for `cf`) in the form.
    let client = uaa.client_from_basic(&headers).or_else(|| {
        let id = form.get("client_id")?;
        let secret = form.get("client_secret").cloned().unwrap_or_default();
        uaa.clients.read().expect("lock").iter().find(|c| &c.id == id && c.secret == secret).cloned()
    });
    let Some(client) = client else {
        return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
    };
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    let claims = match grant {
        "client_credentials" => uaa.client_claims(&client, &TokenRequest::default()),
        "password" => {
            let (Some(name), Some(password)) = (form.get("username"), form.get("password")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "missing credentials");
            };
            let user =
                uaa.users.read().expect("lock").iter().find(|u| &u.name == name && &u.password == password).cloned();
            let Some(user) = user else {
                return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
            };
            uaa.user_claims(&user, &client.id, "password", &TokenRequest::default())
        }
        "refresh_token" => {
            let Some(refresh) = form.get("refresh_token") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "missing refresh_token");
            };
            let known = uaa.refresh_tokens.read().expect("lock").get(refresh).cloned();
            let Some(old) = known else {
                return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "Invalid refresh token");
            };
            let user = uaa.users.read().expect("lock").iter().find(|u| Some(&u.id) == old.user_id.as_ref()).cloned();
            match user {
                Some(user) => uaa.user_claims(&user, &client.id, "refresh_token", &TokenRequest::default()),
                None => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", "user gone"),
            }
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            );
        }
    };
    uaa.token_grants.fetch_add(1, Ordering::Relaxed);
    let access = uaa.sign(&claims, None);
    let mut body = json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": claims.exp.saturating_sub(claims.iat),
        "scope": claims.scope.join(" "),
        "jti": claims.jti,
    });
    if grant != "client_credentials" {
        let refresh = format!("{}-r", uuid::Uuid::new_v4().simple());
        uaa.refresh_tokens.write().expect("lock").insert(refresh.clone(), claims.clone());
        body["refresh_token"] = Value::String(refresh);
    }
    Json(body).into_response()
}

async fn token_keys(State(uaa): State<Arc<Inner>>) -> Json<Value> {
    uaa.token_keys_calls.fetch_add(1, Ordering::Relaxed);
    let keys: Vec<Value> = uaa.keys.read().expect("lock").iter().map(|k| k.jwk().clone()).collect();
    Json(json!({ "keys": keys }))
}

async fn token_key(State(uaa): State<Arc<Inner>>) -> Json<Value> {
    Json(uaa.keys.read().expect("lock")[0].jwk().clone())
}

async fn check_token(
    State(uaa): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    uaa.check_token_calls.fetch_add(1, Ordering::Relaxed);
    if uaa.client_from_basic(&headers).is_none() {
        return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    match uaa.verify(token) {
        Some(claims) => Json(claims).into_response(),
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_token", "The token could not be verified"),
    }
}
