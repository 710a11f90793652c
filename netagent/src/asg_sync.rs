//! Keeping a cell's security groups current: a watch on the cells' API
//! `security_groups` for the spaces of the cell's containers (ETag + `wait`), so a change
//! reaches running containers within moments of the control plane's ASG sync (upstream's
//! agents poll every 60 s). On errors the last groups stay, also across a restart
//! (`state_dir/security_groups.json`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use policy_client::{Watched, watched};

use crate::backoff::Backoff;
use crate::enforcement::egress::{Group, from_asg_rules};
use crate::enforcement::plan::LocalContainer;
use crate::sync::PolicySync;

/// The spaces of the containers, sorted, comma-separated (the API's `space_guids`).
pub fn spaces(containers: &[LocalContainer]) -> String {
    let set: BTreeSet<&str> = containers.iter().filter_map(|c| c.space.as_deref()).collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

/// The groups of an answer. Rules a cell cannot read are left out and logged.
pub fn groups(page: &policy_client::types::SecurityGroupPage) -> Vec<Group> {
    page.security_groups
        .iter()
        .map(|g| {
            let (rules, errors) = from_asg_rules(&g.rules);
            for e in errors {
                tracing::warn!(group = %g.name, guid = %g.guid, error = %e, "skipping a security group rule");
            }
            Group {
                guid: g.guid.clone(),
                rules,
                staging_default: g.staging_default,
                running_default: g.running_default,
                staging_spaces: g.staging_space_guids.iter().cloned().collect(),
                running_spaces: g.running_space_guids.iter().cloned().collect(),
            }
        })
        .collect()
}

fn space_param(spaces: &str) -> Option<&str> {
    (!spaces.is_empty()).then_some(spaces)
}

/// The groups for `spaces`, now.
pub async fn fetch(client: &policy_client::Client, spaces: &str) -> Result<Vec<Group>, String> {
    let page = client
        .internal_security_groups(None, None, space_param(spaces), None, None)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok(groups(&page))
}

pub fn load(path: &Path) -> Vec<Group> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable saved security groups");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Writes atomically (a temporary file, then a rename).
pub fn save(path: &Path, groups: &[Group]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(groups).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// The watch loop.
pub async fn run(sync: Arc<PolicySync>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut etag: Option<String> = None;
    let mut asked_for: Option<String> = None;
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
    loop {
        let Some((containers, _)) = sync.local() else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = sync.asg_wake.notified() => continue,
                _ = stopped.changed() => return,
            }
        };
        let spaces = spaces(&containers);
        if asked_for.as_deref() != Some(spaces.as_str()) {
            etag = None;
            asked_for = Some(spaces.clone());
        }
        let request =
            sync.client.internal_security_groups(None, None, space_param(&spaces), Some("25s"), etag.as_deref());
        tokio::select! {
            answer = request => match watched(answer) {
                Ok(Watched::Changed { value, etag: new }) => {
                    retry.reset();
                    sync.set_groups(&spaces, groups(&value)).await;
                    // A server without the watch answers at once with no ETag: poll gently.
                    if new.is_none() {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                            _ = sync.asg_wake.notified() => {}
                            _ = stopped.changed() => return,
                        }
                    }
                    etag = new;
                }
                Ok(Watched::NotModified) => retry.reset(),
                Err(e) => {
                    let wait = retry.next_wait_jittered();
                    tracing::warn!(error = %e, retry_in = ?wait, "security group watch failed; enforcing the last known groups");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped.changed() => return,
                    }
                }
            },
            _ = sync.asg_wake.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcement::egress::Workload;

    #[test]
    fn spaces_are_sorted_and_unique() {
        let c = |space: Option<&str>| LocalContainer {
            space: space.map(str::to_string),
            workload: Workload::Running,
            ..LocalContainer::new("10.255.1.2".parse().unwrap(), None)
        };
        assert_eq!(spaces(&[c(Some("b")), c(None), c(Some("a")), c(Some("b"))]), "a,b");
        assert_eq!(spaces(&[]), "");
    }

    #[test]
    fn groups_keep_the_rules_they_can_read() {
        let page: policy_client::types::SecurityGroupPage = serde_json::from_value(serde_json::json!({
            "next": 0,
            "security_groups": [{"guid": "g", "name": "n", "staging_default": false, "running_default": true,
                "staging_space_guids": [], "running_space_guids": ["s"],
                "rules": "[{\"protocol\":\"tcp\",\"destination\":\"10.0.0.1\",\"ports\":\"443\"},{\"protocol\":\"bogus\"}]"}]
        }))
        .unwrap();
        let g = groups(&page);
        assert_eq!(g[0].rules.len(), 1);
        assert!(g[0].running_default && g[0].running_spaces.contains("s"));
        let dir = std::env::temp_dir().join(format!("c2c-asg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        save(&dir.join("g.json"), &g).unwrap();
        assert_eq!(load(&dir.join("g.json")), g);
        std::fs::write(dir.join("bad.json"), "{").unwrap();
        assert!(load(&dir.join("bad.json")).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
