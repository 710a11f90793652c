//! Request extractors, in the order upstream checks things: API version (406) before
//! authentication (401) before scopes (403) before the body (400).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::auth::{ADMIN_SCOPE, Identity, WRITE_SCOPE, bearer, scope_error};
use crate::mapper::ApiVersion;
use crate::state::AppState;

/// The `{version}` segment of `/networking/{version}/external/...`.
pub struct Version(pub ApiVersion);

impl FromRequestParts<AppState> for Version {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let segment = parts.uri.path().split('/').nth(2).unwrap_or("");
        ApiVersion::parse(segment).map(Version).ok_or_else(|| {
            ApiError::new(axum::http::StatusCode::NOT_ACCEPTABLE, format!("api version '{segment}' not supported"))
        })
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Identity, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing authorization header"))?;
    match state.verifier.verify(bearer(header)).await {
        Ok(identity) => Ok(identity),
        Err(e) => {
            // The reason is logged, the token never is.
            tracing::info!(reason = %e, "token refused");
            metrics::counter!("c2c_auth_failures_total").increment(1);
            Err(ApiError::unauthorized("failed to verify token with uaa"))
        }
    }
}

/// A caller with `network.admin`.
pub struct Admin(pub Identity);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let identity = authenticate(parts, state).await?;
        if !identity.is_admin() {
            return Err(ApiError::forbidden(scope_error(&identity.scopes, &[ADMIN_SCOPE])));
        }
        Ok(Admin(identity))
    }
}

/// A caller with `network.admin` or `network.write` (any authenticated caller when space
/// developer self-service is on; Cloud Controller roles decide what they may touch).
pub struct Writer(pub Identity);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let identity = authenticate(parts, state).await?;
        let scoped = identity.scopes.iter().any(|s| s == ADMIN_SCOPE || s == WRITE_SCOPE);
        if !scoped && !state.settings.self_service {
            return Err(ApiError::forbidden(scope_error(&identity.scopes, &[ADMIN_SCOPE, WRITE_SCOPE])));
        }
        Ok(Writer(identity))
    }
}
