//! Application security groups: the model the internal API serves, the conversion from
//! Cloud Controller v3, and the pages of the cells' API. (`jobs` mirrors them into the
//! store.)

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One ASG as upstream's internal API shows it; `rules` is a JSON-encoded string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    #[serde(skip)]
    pub id: i64,
    pub guid: String,
    pub name: String,
    pub rules: String,
    pub staging_default: bool,
    pub running_default: bool,
    pub staging_space_guids: Vec<String>,
    pub running_space_guids: Vec<String>,
}

impl SecurityGroup {
    /// Global groups, and groups bound (staging or running) to one of `spaces`.
    pub fn applies_to(&self, spaces: &[String]) -> bool {
        self.staging_default
            || self.running_default
            || spaces.iter().any(|s| self.staging_space_guids.contains(s) || self.running_space_guids.contains(s))
    }
}

/// Upstream's rule object: all seven keys, always.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Rule {
    protocol: String,
    destination: String,
    ports: String,
    #[serde(rename = "type")]
    icmp_type: i64,
    code: i64,
    description: String,
    log: bool,
}

fn rule_from_cc(v: &Value) -> Rule {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let i = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    Rule {
        protocol: s("protocol"),
        destination: s("destination"),
        ports: s("ports"),
        icmp_type: i("type"),
        code: i("code"),
        description: s("description"),
        log: v.get("log").and_then(Value::as_bool).unwrap_or(false),
    }
}

fn guids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.get("guid").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Converts a Cloud Controller v3 security group resource.
pub fn from_cc(resource: &Value) -> Option<SecurityGroup> {
    let rules: Vec<Rule> = resource.get("rules")?.as_array()?.iter().map(rule_from_cc).collect();
    Some(SecurityGroup {
        id: 0,
        guid: resource.get("guid")?.as_str()?.to_string(),
        name: resource.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
        rules: serde_json::to_string(&rules).ok()?,
        staging_default: resource.pointer("/globally_enabled/staging").and_then(Value::as_bool).unwrap_or(false),
        running_default: resource.pointer("/globally_enabled/running").and_then(Value::as_bool).unwrap_or(false),
        staging_space_guids: guids(resource.pointer("/relationships/staging_spaces/data").unwrap_or(&Value::Null)),
        running_space_guids: guids(resource.pointer("/relationships/running_spaces/data").unwrap_or(&Value::Null)),
    })
}

/// The `security_groups` page of the internal API: ordered by id, from `from` (inclusive),
/// at most `limit` (0 = all); `next` is the id of the first group not returned, or 0.
pub fn page<'a>(
    groups: &'a [SecurityGroup],
    spaces: &[String],
    from: i64,
    limit: usize,
) -> (Vec<&'a SecurityGroup>, i64) {
    let mut matching = groups.iter().filter(|g| g.id >= from && g.applies_to(spaces));
    let mut out = Vec::new();
    for g in matching.by_ref() {
        if limit > 0 && out.len() == limit {
            return (out, g.id);
        }
        out.push(g);
    }
    (out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sg(id: i64, staging: bool, spaces: &[&str]) -> SecurityGroup {
        SecurityGroup {
            id,
            guid: format!("g{id}"),
            name: format!("n{id}"),
            rules: "[]".into(),
            staging_default: staging,
            running_default: false,
            staging_space_guids: vec![],
            running_space_guids: spaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn converts_cloud_controller_resources() {
        let r = json!({"guid": "sg-1", "name": "dns", "globally_enabled": {"running": true, "staging": false},
            "rules": [{"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "443"}],
            "relationships": {"staging_spaces": {"data": [{"guid": "s2"}]}, "running_spaces": {"data": [{"guid": "s1"}]}}});
        let g = from_cc(&r).unwrap();
        assert_eq!(g.guid, "sg-1");
        assert!(g.running_default && !g.staging_default);
        assert_eq!(g.staging_space_guids, vec!["s2"]);
        assert_eq!(g.running_space_guids, vec!["s1"]);
        assert_eq!(
            g.rules,
            r#"[{"protocol":"tcp","destination":"10.0.0.0/8","ports":"443","type":0,"code":0,"description":"","log":false}]"#
        );
    }

    #[test]
    fn pages_like_upstream() {
        let groups = vec![sg(1, true, &[]), sg(2, false, &["a"]), sg(3, false, &["b"]), sg(4, true, &[])];
        let ids = |(v, next): (Vec<&SecurityGroup>, i64)| (v.iter().map(|g| g.id).collect::<Vec<_>>(), next);
        assert_eq!(ids(page(&groups, &[], 0, 0)), (vec![1, 4], 0));
        assert_eq!(ids(page(&groups, &["a".into()], 0, 0)), (vec![1, 2, 4], 0));
        assert_eq!(ids(page(&groups, &["a".into(), "b".into()], 0, 2)), (vec![1, 2], 3));
        assert_eq!(ids(page(&groups, &["a".into(), "b".into()], 3, 2)), (vec![3, 4], 0));
    }
}
