//! `c2c-apply`: a file of policies by app name, turned into the creates (and, with
//! `--prune`, deletes) that make the policy server hold exactly those.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use policy_client::types::{Policies, Policy};
use serde::Deserialize;

use super::{Kind, Session, Spec, Ui, api_error};
use crate::cloud_controller::CloudController;
use crate::errors::CommandError;
use crate::flags::{parse_port, parse_protocol};
use crate::target::Target;

pub const SPEC: Spec = Spec {
    kind: Kind::Apply,
    name: "c2c-apply",
    builtin: "c2c-apply",
    description: "Make the policies of a file exist (YAML or JSON, apps by name)",
    usage: "CF_NAME c2c-apply FILE [--prune] [--dry-run]\n\n   FILE lists policies by app name; sources are apps of the targeted space:\n     policies:\n       - source: frontend\n         destination: backend\n         protocol: tcp          # default tcp\n         ports: 8080-8090       # or port: 8080; default 8080\n         space: backend-space   # destination space, default the targeted one\n         org: backend-org       # destination org, default the targeted one",
    examples: &["CF_NAME c2c-apply policies.yml --dry-run", "CF_NAME c2c-apply policies.yml --prune"],
    options: &[
        ("prune", "Also remove policies from the file's source apps that the file does not list"),
        ("dry-run", "Show what would change, change nothing"),
    ],
    switches: &["prune", "dry-run"],
    see_also: "c2c-add-policy, c2c-policies, c2c-remove-policy",
};

/// One entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub protocol: Option<String>,
    /// `8080` or `8080-8090`.
    #[serde(default, alias = "port")]
    pub ports: Option<serde_norway::Value>,
    /// Destination space (default: the targeted space).
    #[serde(default)]
    pub space: Option<String>,
    /// Destination org (default: the targeted org).
    #[serde(default)]
    pub org: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub policies: Vec<Entry>,
}

/// Reads a YAML or JSON policy file (JSON is YAML too).
pub fn read(path: &Path) -> Result<File, CommandError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CommandError::Message(format!("Cannot read {}: {e}", path.display())))?;
    let file: File = serde_norway::from_str(&text)
        .map_err(|e| CommandError::Message(format!("{} is not a valid policy file: {e}", path.display())))?;
    for e in &file.policies {
        if e.org.is_some() && e.space.is_none() {
            return Err(CommandError::Message(format!(
                "{}: the policy {} -> {} names an org but no space",
                path.display(),
                e.source,
                e.destination
            )));
        }
    }
    Ok(file)
}

fn ports_of(e: &Entry) -> Result<(i32, i32), CommandError> {
    match &e.ports {
        None => Ok((8080, 8080)),
        Some(serde_norway::Value::Number(n)) => {
            let p = n.as_i64().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| {
                CommandError::Message(format!("invalid port {n} in the policy {} -> {}", e.source, e.destination))
            })?;
            Ok((p, p))
        }
        Some(serde_norway::Value::String(s)) => parse_port(s).map_err(|_| {
            CommandError::Message(format!("invalid ports {s:?} in the policy {} -> {}", e.source, e.destination))
        }),
        Some(other) => Err(CommandError::Message(format!(
            "invalid ports {other:?} in the policy {} -> {}",
            e.source, e.destination
        ))),
    }
}

/// What applying the file changes, with names to show.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<Policy>,
    pub delete: Vec<Policy>,
    names: HashMap<String, String>,
}

impl Plan {
    pub fn describe(&self, p: &Policy) -> String {
        let name = |g: &String| self.names.get(g).cloned().unwrap_or_else(|| g.clone());
        let (s, e) = (p.destination.ports.start, p.destination.ports.end);
        let ports = if s == e { s.to_string() } else { format!("{s}-{e}") };
        format!("{} -> {} {} {}", name(&p.source.id), name(&p.destination.id), p.destination.protocol, ports)
    }
}

pub async fn plan(
    cc: &CloudController,
    target: &Target,
    policies: &policy_client::Client,
    file: &File,
    prune: bool,
) -> Result<Plan, CommandError> {
    let mut plan = Plan::default();
    let mut wanted = Vec::new();
    let mut spaces: HashMap<(Option<String>, Option<String>), String> = HashMap::new();
    for e in &file.policies {
        let protocol = parse_protocol(e.protocol.as_deref().unwrap_or("tcp")).map_err(|_| {
            CommandError::Message(format!("invalid protocol in the policy {} -> {}", e.source, e.destination))
        })?;
        let (start, end) = ports_of(e)?;
        let key = (e.org.clone(), e.space.clone());
        let dest_space = match spaces.get(&key) {
            Some(s) => s.clone(),
            None => {
                let org = match &e.org {
                    Some(o) => cc.org_by_name(o).await?.guid,
                    None => target.org.0.clone(),
                };
                let space = match &e.space {
                    Some(s) => cc.space_by_name(s, &org).await?.guid,
                    None => target.space.0.clone(),
                };
                spaces.insert(key, space.clone());
                space
            }
        };
        let src = cc.app_by_name(&e.source, &target.space.0).await?;
        let dst = cc.app_by_name(&e.destination, &dest_space).await?;
        plan.names.insert(src.guid.clone(), e.source.clone());
        plan.names.insert(dst.guid.clone(), e.destination.clone());
        let proto =
            if protocol == "udp" { policy_client::types::Protocol::Udp } else { policy_client::types::Protocol::Tcp };
        wanted.push(Policy::new(&src.guid, &dst.guid, proto, start, end));
    }
    let sources: Vec<String> = wanted.iter().map(|p| p.source.id.clone()).collect::<HashSet<_>>().into_iter().collect();
    let mut existing = Vec::new();
    for chunk in sources.chunks(crate::cloud_controller::BATCH) {
        let list = policies.list_policies(None, Some(&chunk.join(",")), None).await.map_err(|e| {
            CommandError::Message(policy_client::error_message(&e).unwrap_or("Request error").to_string())
        })?;
        existing.extend(list.into_inner().policies.into_iter().filter(|p| sources.contains(&p.source.id)));
    }
    for w in &wanted {
        if !existing.contains(w) && !plan.create.contains(w) {
            plan.create.push(w.clone());
        }
    }
    if prune {
        for e in existing {
            if !wanted.contains(&e) {
                plan.delete.push(e);
            }
        }
    }
    Ok(plan)
}

pub(crate) async fn run(
    s: &Session<'_>,
    file: &str,
    prune: bool,
    dry_run: bool,
    ui: &mut Ui<'_>,
) -> Result<(), CommandError> {
    let target = s.target;
    let (org, space, user) = (&target.org.1, &target.space.1, &target.user);
    let wanted = read(Path::new(file))?;
    ui.say(&format!("Applying network policies from {file} in org {org} / space {space} as {user}..."));
    let plan = plan(&s.cc, target, &s.policies, &wanted, prune).await?;
    for p in &plan.create {
        ui.say(&format!("+ {}", plan.describe(p)));
    }
    for p in &plan.delete {
        ui.say(&format!("- {}", plan.describe(p)));
    }
    if plan.create.is_empty() && plan.delete.is_empty() {
        ui.say("Nothing to change.");
    }
    if dry_run {
        ui.say("(dry run: nothing was changed)");
    } else {
        if !plan.create.is_empty() {
            s.policies.create_policies(&Policies { policies: plan.create.clone() }).await.map_err(api_error)?;
        }
        if !plan.delete.is_empty() {
            s.policies.delete_policies(&Policies { policies: plan.delete.clone() }).await.map_err(api_error)?;
        }
    }
    ui.say("OK");
    ui.say("");
    Ok(())
}
