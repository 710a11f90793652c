//! `c2c-policies` (cf's `network-policies`): the policies of the targeted space's apps, or
//! of one app, with names, as a table or JSON.

use std::collections::{HashMap, HashSet};

use policy_client::types::Policy;

use super::{Kind, Session, Spec, Ui, policies_from, ports_text};
use crate::cloud_controller::{CloudController, Resource};
use crate::errors::CommandError;

pub const SPEC: Spec = Spec {
    kind: Kind::List,
    name: "c2c-policies",
    builtin: "network-policies",
    description: "List direct network traffic policies",
    usage: "CF_NAME c2c-policies [--source SOURCE_APP]",
    examples: &[],
    options: &[("source", "Source app to filter results by"), ("output", "Output format: table (default) or json")],
    switches: &[],
    see_also: "add-network-policy, apps, remove-network-policy",
};

/// One listed policy with names: source, destination, protocol, ports, space, org.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Row {
    source: String,
    destination: String,
    protocol: String,
    ports: String,
    start: i32,
    end: i32,
    destination_space: String,
    destination_org: String,
}

/// Names for the apps, spaces and orgs of `found` (empty when the user cannot see them).
async fn named_rows(cc: &CloudController, sources: Vec<Resource>, found: &[Policy]) -> Result<Vec<Row>, CommandError> {
    let dest_ids: Vec<String> =
        found.iter().map(|p| p.destination.id.clone()).collect::<HashSet<_>>().into_iter().collect();
    let mut apps: HashMap<String, Resource> = sources.into_iter().map(|a| (a.guid.clone(), a)).collect();
    for app in cc.apps(&dest_ids).await? {
        apps.insert(app.guid.clone(), app);
    }
    let space_ids: Vec<String> = apps.values().map(|a| a.parent.clone()).collect::<HashSet<_>>().into_iter().collect();
    let spaces: HashMap<String, Resource> =
        cc.spaces(&space_ids).await?.into_iter().map(|s| (s.guid.clone(), s)).collect();
    let org_ids: Vec<String> = spaces.values().map(|s| s.parent.clone()).collect::<HashSet<_>>().into_iter().collect();
    let orgs: HashMap<String, String> = cc.orgs(&org_ids).await?.into_iter().map(|o| (o.guid, o.name)).collect();
    let name = |guid: &String| apps.get(guid).map(|a| a.name.clone()).unwrap_or_default();
    Ok(found
        .iter()
        .map(|p| {
            let ports = &p.destination.ports;
            let dst_space = apps.get(&p.destination.id).and_then(|a| spaces.get(&a.parent));
            Row {
                source: name(&p.source.id),
                destination: name(&p.destination.id),
                protocol: p.destination.protocol.to_string(),
                ports: ports_text(ports.start, ports.end),
                start: ports.start,
                end: ports.end,
                destination_space: dst_space.map(|s| s.name.clone()).unwrap_or_default(),
                destination_org: dst_space.and_then(|s| orgs.get(&s.parent)).cloned().unwrap_or_default(),
            }
        })
        .collect())
}

pub(crate) async fn run(
    s: &Session<'_>,
    source: Option<&str>,
    json: bool,
    ui: &mut Ui<'_>,
) -> Result<(), CommandError> {
    let target = s.target;
    let (org, space, user) = (&target.org.1, &target.space.1, &target.user);
    let sources = match source {
        Some(name) => {
            if !json {
                ui.say(&format!("Listing network policies of app {name} in org {org} / space {space} as {user}..."));
            }
            vec![s.cc.app_by_name(name, &target.space.0).await?]
        }
        None => {
            if !json {
                ui.say(&format!("Listing network policies in org {org} / space {space} as {user}..."));
            }
            s.cc.apps_in_space(&target.space.0).await?
        }
    };
    let source_ids: Vec<String> = sources.iter().map(|a| a.guid.clone()).collect();
    let found = policies_from(&s.policies, &source_ids).await?;
    let rows = named_rows(&s.cc, sources, &found).await?;
    if json {
        let body = serde_json::json!({ "policies": rows });
        let _ = writeln!(ui.out, "{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        return Ok(());
    }
    ui.say("");
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| vec![r.source, r.destination, r.protocol, r.ports, r.destination_space, r.destination_org])
        .collect();
    let headers = ["source", "destination", "protocol", "ports", "destination space", "destination org"];
    let _ = write!(ui.out, "{}", crate::table::render(&headers, &cells));
    Ok(())
}
