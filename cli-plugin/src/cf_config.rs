//! Standalone mode: the target, tokens, org and space from the cf CLI's own config file
//! (`$CF_HOME/.cf/config.json`, `$HOME` when `CF_HOME` is unset), with the access token
//! refreshed through UAA like cf does when it is about to expire.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;

use crate::errors::CommandError;
use crate::target::Target;

pub fn config_path() -> PathBuf {
    let home = std::env::var_os("CF_HOME").or_else(|| std::env::var_os("HOME")).unwrap_or_default();
    PathBuf::from(home).join(".cf").join("config.json")
}

/// The claims of a JWT, without verifying it (the plugin only needs to know who and when).
fn claims(token: &str) -> Option<Value> {
    let jwt = token.strip_prefix("bearer ").or_else(|| token.strip_prefix("Bearer ")).unwrap_or(token);
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn expires_soon(token: &str) -> bool {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    claims(token).and_then(|c| c.get("exp").and_then(Value::as_u64)).is_none_or(|exp| exp < now + 60)
}

fn s(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// Reads the target from the cf config, refreshing (and saving) the token if it expires
/// within a minute, or in any case with `force_refresh` (after an API refused it).
pub async fn load(path: &Path, force_refresh: bool) -> Result<Target, CommandError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Ok(Target::default()),
    };
    let mut config: Value = serde_json::from_str(&text)
        .map_err(|e| CommandError::Message(format!("cf config {} is not valid JSON: {e}", path.display())))?;
    let mut token = s(&config, "AccessToken");
    let refresh = s(&config, "RefreshToken");
    if !refresh.is_empty() && (force_refresh || token.is_empty() || expires_soon(&token)) {
        let (access, new_refresh) = refresh_token(&config, &refresh).await?;
        token = format!("bearer {access}");
        config["AccessToken"] = Value::String(token.clone());
        if let Some(r) = new_refresh {
            config["RefreshToken"] = Value::String(r);
        }
        let pretty = serde_json::to_string_pretty(&config).map_err(|e| CommandError::Message(e.to_string()))?;
        write_atomically(path, pretty.as_bytes()).map_err(|e| {
            CommandError::Message(format!("cannot save the refreshed token to {}: {e}", path.display()))
        })?;
    }
    let user = claims(&token)
        .map(|c| {
            let name = s(&c, "user_name");
            if name.is_empty() { s(&c, "client_id") } else { name }
        })
        .unwrap_or_default();
    let org = &config["OrganizationFields"];
    let space = &config["SpaceFields"];
    Ok(Target {
        api: s(&config, "Target").trim_end_matches('/').to_string(),
        logged_in: !token.is_empty() || !refresh.is_empty(),
        token,
        ssl_disabled: config.get("SSLDisabled").and_then(Value::as_bool).unwrap_or(false),
        org: (s(org, "GUID"), s(org, "Name")),
        space: (s(space, "GUID"), s(space, "Name")),
        user,
    })
}

async fn refresh_token(config: &Value, refresh: &str) -> Result<(String, Option<String>), CommandError> {
    let uaa = [s(config, "UaaEndpoint"), s(config, "AuthorizationEndpoint")]
        .into_iter()
        .find(|u| !u.is_empty())
        .ok_or_else(|| {
            CommandError::Message("The cf config names no UAA endpoint. Please log back in to re-authenticate.".into())
        })?;
    let client = {
        let c = s(config, "UAAOAuthClient");
        if c.is_empty() { "cf".to_string() } else { c }
    };
    let secret = s(config, "UAAOAuthClientSecret");
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(config.get("SSLDisabled").and_then(Value::as_bool).unwrap_or(false))
        .timeout(crate::commands::REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| CommandError::Message(e.to_string()))?;
    let uaa = uaa_client::Uaa::new(http, &uaa, &client, &secret)
        .map_err(|e| CommandError::Message(format!("The cf config's UAA endpoint is unusable: {e}")))?;
    match uaa.refresh(refresh).await {
        Ok(grant) => Ok((grant.access_token, grant.refresh_token)),
        Err(uaa_client::UaaError::Transport(e)) => Err(CommandError::Message(format!("Request error: {e}"))),
        Err(_) => Err(CommandError::Message(
            "The token expired, was revoked, or the token ID is incorrect. Please log back in to re-authenticate."
                .into(),
        )),
    }
}

/// Replaces `path` with `contents` so that a reader (cf itself, another plugin) sees the old
/// file or the new one, never half of one: a temporary file beside it, synced, then renamed.
/// It keeps the original's permissions (cf writes 0600: the file holds tokens).
fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mode =
        std::fs::metadata(path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap_or(0o600);
    let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode & 0o777).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod atomic_write_tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_and_keeps_its_mode() {
        let dir = std::env::temp_dir().join(format!("c2c-cfconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        super::write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
