//! UAA's OAuth2 grants for c2c's services and tools (client credentials for services, refresh for the CLI), through the
//! `oauth2` crate on the workspace's one reqwest: `oauth2`'s own reqwest integration pins
//! another major version, so requests go through this crate's own `AsyncHttpClient` instead.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{ClientId, ClientSecret, RefreshToken, TokenResponse, TokenUrl};

/// A token UAA granted.
#[derive(Clone)]
pub struct Grant {
    pub access_token: String,
    /// Present on refresh grants when UAA rotates refresh tokens.
    pub refresh_token: Option<String>,
    /// Lifetime UAA gave the access token, if it said.
    pub expires_in: Option<Duration>,
    /// Scopes granted, when UAA lists them.
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<redacted>"))
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UaaError {
    #[error("{0:?} is not a UAA URL")]
    Url(String),
    #[error("UAA could not be reached: {0}")]
    Transport(String),
    /// UAA refused the grant (`invalid_client`, `invalid_grant`, ...).
    #[error("UAA refused the grant: {0}")]
    Refused(String),
    #[error("UAA's answer is not a token: {0}")]
    Answer(String),
}

/// A client of UAA's `/oauth/token`, authenticating with HTTP Basic as UAA expects.
pub struct Uaa {
    http: Http,
    client: oauth2::Client<
        oauth2::basic::BasicErrorResponse,
        BasicTokenResponse,
        oauth2::basic::BasicTokenIntrospectionResponse,
        oauth2::StandardRevocableToken,
        oauth2::basic::BasicRevocationErrorResponse,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    >,
}

impl Uaa {
    /// `uaa_url` is UAA's base URL (`https://uaa.example.com`); an empty `client_secret` is
    /// sent as such (the cf CLI's `cf` client has none).
    pub fn new(http: reqwest::Client, uaa_url: &str, client_id: &str, client_secret: &str) -> Result<Uaa, UaaError> {
        let token_url = format!("{}/oauth/token", uaa_url.trim_end_matches('/'));
        let token_url = TokenUrl::new(token_url.clone()).map_err(|_| UaaError::Url(uaa_url.to_string()))?;
        let client = BasicClient::new(ClientId::new(client_id.to_string()))
            .set_client_secret(ClientSecret::new(client_secret.to_string()))
            .set_token_uri(token_url);
        Ok(Uaa { http: Http(http), client })
    }

    /// The client credentials grant: a token for the client itself.
    pub async fn client_credentials(&self) -> Result<Grant, UaaError> {
        let answer = self.client.exchange_client_credentials().request_async(&self.http).await;
        grant(answer)
    }

    /// The refresh grant: a new access token for the user behind `refresh_token`.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Grant, UaaError> {
        let refresh = RefreshToken::new(refresh_token.to_string());
        let answer = self.client.exchange_refresh_token(&refresh).request_async(&self.http).await;
        grant(answer)
    }
}

fn grant(
    answer: Result<
        BasicTokenResponse,
        oauth2::RequestTokenError<UaaError, oauth2::StandardErrorResponse<oauth2::basic::BasicErrorResponseType>>,
    >,
) -> Result<Grant, UaaError> {
    use oauth2::RequestTokenError as E;
    match answer {
        Ok(t) => Ok(Grant {
            access_token: t.access_token().secret().clone(),
            refresh_token: t.refresh_token().map(|r| r.secret().clone()),
            expires_in: t.expires_in(),
            scopes: t.scopes().map(|s| s.iter().map(|s| s.to_string()).collect()).unwrap_or_default(),
        }),
        Err(E::Request(e)) => Err(e),
        Err(E::ServerResponse(e)) => Err(UaaError::Refused(e.error().to_string())),
        Err(E::Parse(e, _)) => Err(UaaError::Answer(e.to_string())),
        Err(E::Other(e)) => Err(UaaError::Refused(e)),
    }
}

/// `oauth2`'s HTTP client trait on the workspace's reqwest. A named type with a boxed `Send`
/// future (rather than a closure) keeps the grant futures `Send` for any caller.
struct Http(reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = UaaError;
    type Future = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, UaaError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(send(&self.0, request))
    }
}

/// Sends one of `oauth2`'s requests with the workspace's reqwest; redirects are the
/// client's policy (token endpoints must not redirect, and the clients here follow none).
async fn send(http: &reqwest::Client, req: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, UaaError> {
    let (parts, body) = req.into_parts();
    let resp = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| UaaError::Transport(e.without_url().to_string()))?;
    let mut out = http::Response::builder().status(resp.status());
    if let Some(headers) = out.headers_mut() {
        headers.extend(resp.headers().iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let body = resp.bytes().await.map_err(|e| UaaError::Transport(e.without_url().to_string()))?;
    out.body(body.to_vec()).map_err(|e| UaaError::Answer(e.to_string()))
}
