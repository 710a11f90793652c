//! The Cloud Controller v3 lookups of the network-policy commands, made as the cf CLI makes
//! them, and the discovery of the policy API through the root document.

use serde::Deserialize;
use serde_json::Value;

use crate::errors::CommandError;

/// Cloud Controller accepts this many GUIDs per filter in the CLI's requests.
pub const BATCH: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub guid: String,
    pub name: String,
    /// The space of an app, the org of a space.
    pub parent: String,
}

pub struct CloudController {
    http: reqwest::Client,
    api: String,
    token: String,
}

#[derive(Deserialize)]
struct Page {
    resources: Vec<Value>,
    pagination: Pagination,
}

#[derive(Deserialize)]
struct Pagination {
    next: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
}

fn resource(v: &Value, parent: &str) -> Resource {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    Resource { guid: s("/guid"), name: s("/name"), parent: s(&format!("/relationships/{parent}/data/guid")) }
}

impl CloudController {
    pub fn new(http: reqwest::Client, api: &str, token: &str) -> Self {
        CloudController { http, api: api.trim_end_matches('/').to_string(), token: token.to_string() }
    }

    async fn get(&self, url: &str) -> Result<Value, CommandError> {
        let resp = self
            .http
            .get(url)
            .header("Authorization", &self.token)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| CommandError::Message(format!("Request error: {e}")))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() == 401 {
            return Err(CommandError::Unauthorized(
                "The token expired, was revoked, or the token ID is incorrect. Please log back in to re-authenticate."
                    .into(),
            ));
        }
        if !status.is_success() {
            let detail = body.pointer("/errors/0/detail").and_then(Value::as_str).unwrap_or("unexpected response");
            return Err(CommandError::Message(detail.to_string()));
        }
        Ok(body)
    }

    /// `links.network_policy_v1.href` of the root document.
    pub async fn policy_api(&self) -> Result<String, CommandError> {
        let root = self.get(&format!("{}/", self.api)).await?;
        root.pointer("/links/network_policy_v1/href").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            CommandError::Message(
                "This command requires Network Policy API V1. Your targeted endpoint does not expose it.".into(),
            )
        })
    }

    async fn list(&self, path: &str, query: &[(&str, String)], parent: &str) -> Result<Vec<Resource>, CommandError> {
        let mut url =
            url::Url::parse(&format!("{}{path}", self.api)).map_err(|e| CommandError::Message(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let mut next = Some(url.to_string());
        let mut out = Vec::new();
        while let Some(u) = next {
            let page: Page = serde_json::from_value(self.get(&u).await?)
                .map_err(|e| CommandError::Message(format!("unexpected Cloud Controller answer: {e}")))?;
            out.extend(page.resources.iter().map(|r| resource(r, parent)));
            next = page.pagination.next.map(|l| l.href).filter(|h| h.starts_with(&self.api));
        }
        Ok(out)
    }

    pub async fn app_by_name(&self, name: &str, space: &str) -> Result<Resource, CommandError> {
        let q = [
            ("names", name.to_string()),
            ("page", "1".into()),
            ("per_page", "1".into()),
            ("space_guids", space.into()),
        ];
        self.list("/v3/apps", &q, "space")
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| CommandError::Message(format!("App '{name}' not found.")))
    }

    pub async fn apps_in_space(&self, space: &str) -> Result<Vec<Resource>, CommandError> {
        self.list("/v3/apps", &[("space_guids", space.to_string())], "space").await
    }

    async fn by_guids(&self, path: &str, guids: &[String], parent: &str) -> Result<Vec<Resource>, CommandError> {
        let mut out = Vec::new();
        for chunk in guids.chunks(BATCH) {
            if chunk.is_empty() {
                continue;
            }
            out.extend(self.list(path, &[("guids", chunk.join(","))], parent).await?);
        }
        Ok(out)
    }

    pub async fn apps(&self, guids: &[String]) -> Result<Vec<Resource>, CommandError> {
        self.by_guids("/v3/apps", guids, "space").await
    }

    pub async fn spaces(&self, guids: &[String]) -> Result<Vec<Resource>, CommandError> {
        self.by_guids("/v3/spaces", guids, "organization").await
    }

    pub async fn orgs(&self, guids: &[String]) -> Result<Vec<Resource>, CommandError> {
        self.by_guids("/v3/organizations", guids, "none").await
    }

    pub async fn org_by_name(&self, name: &str) -> Result<Resource, CommandError> {
        let q = [("names", name.to_string()), ("page", "1".into()), ("per_page", "1".into())];
        self.list("/v3/organizations", &q, "none")
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| CommandError::Message(format!("Organization '{name}' not found.")))
    }

    pub async fn space_by_name(&self, name: &str, org: &str) -> Result<Resource, CommandError> {
        let q = [
            ("names", name.to_string()),
            ("organization_guids", org.to_string()),
            ("page", "1".into()),
            ("per_page", "1".into()),
        ];
        self.list("/v3/spaces", &q, "organization")
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| CommandError::Message(format!("Space '{name}' not found.")))
    }
}
