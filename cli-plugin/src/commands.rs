//! The network-policy commands: the cf CLI's built-in `network-policies`,
//! `add-network-policy` and `remove-network-policy` (same flags, defaults, validation, output
//! and errors), registered under plugin names that do not collide with the built-ins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use policy_client::types::{Policies, Policy, Protocol};

use crate::cloud_controller::{BATCH, CloudController, Resource};
use crate::errors::CommandError;
use crate::metadata::{CommandMetadata, Metadata};
use crate::target::Target;

/// One command: its plugin name, the built-in name it mirrors, and its help.
pub struct Spec {
    pub name: &'static str,
    pub builtin: &'static str,
    pub description: &'static str,
    pub usage: &'static str,
    pub examples: &'static [&'static str],
    pub options: &'static [(&'static str, &'static str)],
    /// Options that take no value.
    pub switches: &'static [&'static str],
    pub see_also: &'static str,
}

pub const LIST: Spec = Spec {
    name: "c2c-policies",
    builtin: "network-policies",
    description: "List direct network traffic policies",
    usage: "CF_NAME c2c-policies [--source SOURCE_APP]",
    examples: &[],
    options: &[("source", "Source app to filter results by"), ("output", "Output format: table (default) or json")],
    switches: &[],
    see_also: "add-network-policy, apps, remove-network-policy",
};

pub const ADD: Spec = Spec {
    name: "c2c-add-policy",
    builtin: "add-network-policy",
    description: "Create policy to allow direct network traffic from one app to another",
    usage: "CF_NAME c2c-add-policy SOURCE_APP DESTINATION_APP [-s DESTINATION_SPACE_NAME [-o DESTINATION_ORG_NAME]] [--protocol (tcp | udp) --port RANGE]",
    examples: &[
        "CF_NAME c2c-add-policy frontend backend --protocol tcp --port 8081",
        "CF_NAME c2c-add-policy frontend backend -s backend-space -o backend-org --protocol tcp --port 8080-8090",
    ],
    options: &[
        ("port", "Port or range of ports for connection to destination app (Default: 8080)"),
        ("protocol", "Protocol to connect apps with (Default: tcp)"),
        ("o", "The org of the destination app (Default: targeted org)"),
        ("s", "The space of the destination app (Default: targeted space)"),
    ],
    switches: &[],
    see_also: "apps, network-policies, remove-network-policy",
};

pub const REMOVE: Spec = Spec {
    name: "c2c-remove-policy",
    builtin: "remove-network-policy",
    description: "Remove network traffic policy of an app",
    usage: "CF_NAME c2c-remove-policy SOURCE_APP DESTINATION_APP [-s DESTINATION_SPACE_NAME [-o DESTINATION_ORG_NAME]] --protocol (tcp | udp) --port RANGE",
    examples: &[
        "CF_NAME c2c-remove-policy frontend backend --protocol tcp --port 8081",
        "CF_NAME c2c-remove-policy frontend backend -s backend-space -o backend-org --protocol tcp --port 8080-8090",
    ],
    options: &[
        ("port", "Port or range of ports that destination app is connected with"),
        ("protocol", "Protocol that apps are connected with"),
        ("o", "The org of the destination app (Default: targeted org)"),
        ("s", "The space of the destination app (Default: targeted space)"),
    ],
    switches: &[],
    see_also: "add-network-policy, apps, network-policies",
};

pub const APPLY: Spec = Spec {
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

pub const CHECK: Spec = Spec {
    name: "c2c-check",
    builtin: "c2c-check",
    description: "Say whether a policy allows traffic from one app to another, and which",
    usage: "CF_NAME c2c-check SOURCE_APP DESTINATION_APP [-s DESTINATION_SPACE_NAME [-o DESTINATION_ORG_NAME]] --protocol (tcp | udp) --port PORT",
    examples: &["CF_NAME c2c-check frontend backend --protocol tcp --port 8080"],
    options: &[
        ("port", "Port the source app connects to"),
        ("protocol", "Protocol the source app connects with"),
        ("o", "The org of the destination app (Default: targeted org)"),
        ("s", "The space of the destination app (Default: targeted space)"),
    ],
    switches: &[],
    see_also: "c2c-add-policy, c2c-policies",
};

pub const ALL: [&Spec; 5] = [&LIST, &ADD, &REMOVE, &APPLY, &CHECK];

/// The spec of a command given by its plugin name or, standalone, its built-in name.
pub fn lookup(name: &str) -> Option<&'static Spec> {
    ALL.into_iter().find(|s| s.name == name || s.builtin == name)
}

/// What `SendMetadata` reports to cf.
pub fn metadata() -> Metadata {
    let version = |i: usize| env!("CARGO_PKG_VERSION").split('.').nth(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    Metadata {
        name: "c2c",
        version: (version(0), version(1), version(2)),
        min_cli_version: (0, 0, 0),
        commands: ALL
            .iter()
            .map(|s| CommandMetadata {
                name: s.name,
                help_text: s.description,
                usage: s.usage,
                options: s.options.iter().copied().collect::<BTreeMap<_, _>>(),
            })
            .collect(),
    }
}

/// Help in the cf CLI's layout; `binary` replaces `CF_NAME`.
pub fn help(spec: &Spec, binary: &str) -> String {
    let mut out = format!(
        "NAME:\n   {} - {}\n\nUSAGE:\n   {}\n",
        spec.name,
        spec.description,
        spec.usage.replace("CF_NAME", binary)
    );
    if !spec.examples.is_empty() {
        out.push_str("\nEXAMPLES:\n");
        for e in spec.examples {
            out.push_str(&format!("   {}\n", e.replace("CF_NAME", binary)));
        }
    }
    let flag = |k: &str| if k.len() == 1 { format!("-{k}") } else { format!("--{k}") };
    let width = spec.options.iter().map(|(k, _)| flag(k).len()).max().unwrap_or(0) + 6;
    out.push_str("\nOPTIONS:\n");
    for (k, v) in spec.options {
        out.push_str(&format!("   {:<width$}{}\n", flag(k), v));
    }
    out.push_str(&format!("\nSEE ALSO:\n   {}\n", spec.see_also));
    out
}

/// A parsed add/remove command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyArgs {
    pub source: String,
    pub destination: String,
    pub space: Option<String>,
    pub org: Option<String>,
    pub protocol: String,
    pub start: i32,
    pub end: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    List {
        source: Option<String>,
        json: bool,
    },
    Add(PolicyArgs),
    Remove(PolicyArgs),
    Apply {
        file: String,
        prune: bool,
        dry_run: bool,
    },
    /// Uses `start` as the port to check.
    Check(PolicyArgs),
}

/// `--port`: `N` or `N-M`; range checks are the server's.
pub fn parse_port(v: &str) -> Result<(i32, i32), CommandError> {
    let positive = || CommandError::FlagUsage("PORT must be a positive integer".into());
    let parts: Vec<&str> = v.split('-').collect();
    let num = |s: &str| s.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(positive);
    match parts.as_slice() {
        [one] => num(one).map(|p| (p, p)),
        [a, b] => Ok((num(a)?, num(b)?)),
        _ if parts.first().is_some_and(|p| p.is_empty()) => Err(positive()),
        _ => Err(CommandError::FlagUsage("PORT syntax must match integer[-integer]".into())),
    }
}

pub fn parse_protocol(v: &str) -> Result<String, CommandError> {
    let p = v.to_ascii_lowercase();
    if p == "tcp" || p == "udp" {
        Ok(p)
    } else {
        Err(CommandError::FlagUsage("PROTOCOL must be \"tcp\" or \"udp\"".into()))
    }
}

/// Parses a command line after the command name, in the cf CLI's order of checks.
pub fn parse(spec: &Spec, args: &[String]) -> Result<Command, CommandError> {
    let takes = |f: &str| spec.options.iter().any(|(name, _)| *name == f);
    let switch = |f: &str| spec.switches.contains(&f);
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|f| !f.is_empty()) {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            if !takes(&name) {
                return Err(CommandError::FlagUsage(format!("unknown flag `{name}'")));
            }
            let value = match inline {
                Some(v) => v,
                None if switch(&name) => "true".to_string(),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| CommandError::FlagUsage(format!("expected argument for flag `{arg}'")))?,
            };
            flags.insert(name, value);
        } else {
            positional.push(arg.clone());
        }
    }
    if spec.name == LIST.name {
        if !positional.is_empty() {
            return Err(CommandError::Usage(format!("unexpected argument \"{}\"", positional.join(" "))));
        }
        let json = match flags.get("output").map(String::as_str) {
            None | Some("table") => false,
            Some("json") => true,
            Some(_) => return Err(CommandError::FlagUsage("OUTPUT must be \"table\" or \"json\"".into())),
        };
        return Ok(Command::List { source: flags.remove("source"), json });
    }
    if spec.name == APPLY.name {
        let file = match positional.as_slice() {
            [] => return Err(CommandError::FlagUsage("the required argument `FILE` was not provided".into())),
            [file] => file.clone(),
            [_, rest @ ..] => return Err(CommandError::Usage(format!("unexpected argument \"{}\"", rest.join(" ")))),
        };
        return Ok(Command::Apply { file, prune: flags.contains_key("prune"), dry_run: flags.contains_key("dry-run") });
    }
    let protocol = flags.get("protocol").map(|p| parse_protocol(p)).transpose()?;
    let port = flags.get("port").map(|p| parse_port(p)).transpose()?;
    match positional.len() {
        0 => {
            return Err(CommandError::FlagUsage(
                "the required arguments `SOURCE_APP` and `DESTINATION_APP` were not provided".into(),
            ));
        }
        1 => return Err(CommandError::FlagUsage("the required argument `DESTINATION_APP` was not provided".into())),
        _ => {}
    }
    let remove = spec.name == REMOVE.name || spec.name == CHECK.name;
    if remove && protocol.is_none() {
        return Err(CommandError::FlagUsage("the required flag `--protocol' was not specified".into()));
    }
    if remove && port.is_none() {
        return Err(CommandError::FlagUsage("the required flag `--port' was not specified".into()));
    }
    if positional.len() > 2 {
        return Err(CommandError::Usage(format!("unexpected argument \"{}\"", positional[2..].join(" "))));
    }
    if !remove && protocol.is_some() != port.is_some() {
        return Err(CommandError::Usage("--protocol and --port flags must be specified together".into()));
    }
    if flags.contains_key("o") && !flags.contains_key("s") {
        return Err(CommandError::Usage(
            "A space must be provided when an org is provided, but the '-s' flag was not specified.".into(),
        ));
    }
    let (start, end) = port.unwrap_or((8080, 8080));
    let args = PolicyArgs {
        source: positional[0].clone(),
        destination: positional[1].clone(),
        space: flags.remove("s"),
        org: flags.remove("o"),
        protocol: protocol.unwrap_or_else(|| "tcp".into()),
        start,
        end,
    };
    Ok(match spec.name {
        "c2c-remove-policy" => Command::Remove(args),
        "c2c-check" => Command::Check(args),
        _ => Command::Add(args),
    })
}

/// Where a command writes: stdout and stderr (buffers in tests).
pub struct Ui<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

impl Ui<'_> {
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
    }
}

fn checks(target: &Target) -> Result<(), CommandError> {
    let fail = |m: &str| Err(CommandError::Message(m.to_string()));
    if target.api.is_empty() {
        return fail("No API endpoint set. Use 'cf login' or 'cf api' to target an endpoint.");
    }
    if !target.logged_in {
        return fail("Not logged in. Use 'cf login' or 'cf login --sso' to log in.");
    }
    if target.org.0.is_empty() {
        return fail("No org targeted, use 'cf target -o ORG' to target an org.");
    }
    if target.space.0.is_empty() {
        return fail("No space targeted, use 'cf target -s SPACE' to target a space.");
    }
    Ok(())
}

fn http_client(target: &Target) -> Result<reqwest::Client, CommandError> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(target.ssl_disabled)
        .connect_timeout(std::time::Duration::from_secs(6))
        .user_agent(concat!("cf-c2c/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CommandError::Message(e.to_string()))
}

fn policy_client(target: &Target, href: &str) -> Result<policy_client::Client, CommandError> {
    let base = href.trim_end_matches('/').trim_end_matches("/networking/v1/external");
    let mut headers = reqwest::header::HeaderMap::new();
    let mut token = reqwest::header::HeaderValue::from_str(&target.token)
        .map_err(|_| CommandError::Message("the access token is not a valid header value".into()))?;
    token.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, token);
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(target.ssl_disabled)
        .default_headers(headers)
        .connect_timeout(std::time::Duration::from_secs(6))
        .build()
        .map_err(|e| CommandError::Message(e.to_string()))?;
    Ok(policy_client::Client::new_with_client(base, client))
}

fn api_error(err: policy_client::Error<policy_client::types::Error>) -> CommandError {
    if let Some(m) = policy_client::error_message(&err) {
        if err.status().map(|s| s.as_u16()) == Some(401) {
            return CommandError::Unauthorized(m.to_string());
        }
        return CommandError::Message(m.to_string());
    }
    match err.status() {
        Some(status) => CommandError::Message(format!("Unexpected Response\nResponse code: {}", status.as_u16())),
        None => CommandError::Message(format!("Request error: {err}")),
    }
}

fn protocol(p: &str) -> Protocol {
    if p == "udp" { Protocol::Udp } else { Protocol::Tcp }
}

/// The destination of an add/remove/check: org and space (resolved only when given).
async fn destination(
    cc: &CloudController,
    target: &Target,
    org: Option<&str>,
    space: Option<&str>,
) -> Result<(Resource, Option<Resource>), CommandError> {
    let dest_org = match org {
        Some(name) => cc.org_by_name(name).await?,
        None => Resource { guid: target.org.0.clone(), name: target.org.1.clone(), parent: String::new() },
    };
    let dest_space = match space {
        Some(name) => Some(cc.space_by_name(name, &dest_org.guid).await?),
        None => None,
    };
    Ok((dest_org, dest_space))
}

/// Policies whose source is one of `sources` (the API also returns those where they are the
/// destination), asked in batches.
async fn policies_from(policies: &policy_client::Client, sources: &[String]) -> Result<Vec<Policy>, CommandError> {
    let wanted: HashSet<&String> = sources.iter().collect();
    let mut found = Vec::new();
    for chunk in sources.chunks(BATCH) {
        let list = policies.list_policies(None, Some(&chunk.join(",")), None).await.map_err(api_error)?;
        found.extend(list.into_inner().policies.into_iter().filter(|p| wanted.contains(&p.source.id)));
    }
    Ok(found)
}

fn ports_text(start: i32, end: i32) -> String {
    if start == end { start.to_string() } else { format!("{start}-{end}") }
}

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

/// Runs a parsed command against the target.
pub async fn run(command: &Command, target: &Target, ui: &mut Ui<'_>) -> Result<(), CommandError> {
    let http = http_client(target)?;
    let cc = CloudController::new(http, &target.api, &target.token);
    if target.api.is_empty() {
        checks(target)?;
    }
    let href = cc.policy_api().await?;
    checks(target)?;
    let policies = policy_client(target, &href)?;
    let (org, space, user) = (&target.org.1, &target.space.1, &target.user);
    match command {
        Command::Add(a) | Command::Remove(a) | Command::Check(a) => {
            let (dest_org, dest_space) = destination(&cc, target, a.org.as_deref(), a.space.as_deref()).await?;
            let verb = match command {
                Command::Add(_) => "Adding network policy",
                Command::Remove(_) => "Removing network policy",
                _ => "Checking network policies",
            };
            match &dest_space {
                None => ui.say(&format!(
                    "{verb} from app {} to app {} in org {org} / space {space} as {user}...",
                    a.source, a.destination
                )),
                Some(ds) => ui.say(&format!(
                    "{verb} from app {} in org {org} / space {space} to app {} in org {} / space {} as {user}...",
                    a.source, a.destination, dest_org.name, ds.name
                )),
            }
            let src = cc.app_by_name(&a.source, &target.space.0).await?;
            let dst_space_guid = dest_space.as_ref().map(|s| s.guid.clone()).unwrap_or_else(|| target.space.0.clone());
            let dst = cc.app_by_name(&a.destination, &dst_space_guid).await?;
            let policy = Policy::new(&src.guid, &dst.guid, protocol(&a.protocol), a.start, a.end);
            match command {
                Command::Add(_) => {
                    policies.create_policies(&Policies { policies: vec![policy] }).await.map_err(api_error)?;
                }
                Command::Remove(_) => {
                    let existing = policies_from(&policies, std::slice::from_ref(&src.guid)).await?;
                    if existing.contains(&policy) {
                        policies.delete_policies(&Policies { policies: vec![policy] }).await.map_err(api_error)?;
                    } else {
                        ui.say("Policy does not exist.");
                    }
                }
                _ => {
                    let existing = policies_from(&policies, std::slice::from_ref(&src.guid)).await?;
                    let allowing = existing.iter().find(|p| {
                        p.destination.id == dst.guid
                            && p.destination.protocol == policy.destination.protocol
                            && p.destination.ports.start <= a.start
                            && a.start <= p.destination.ports.end
                    });
                    match allowing {
                        Some(p) => ui.say(&format!(
                            "Allowed: {} -> {} {} {} by the policy for {} {}",
                            a.source,
                            a.destination,
                            a.protocol,
                            a.start,
                            p.destination.protocol,
                            ports_text(p.destination.ports.start, p.destination.ports.end)
                        )),
                        None => {
                            return Err(CommandError::Message(format!(
                                "Not allowed: no policy lets {} reach {} on {} port {}.",
                                a.source, a.destination, a.protocol, a.start
                            )));
                        }
                    }
                }
            }
            ui.say("OK");
            ui.say("");
            Ok(())
        }
        Command::List { source, json } => {
            let sources = match source {
                Some(name) => {
                    if !json {
                        ui.say(&format!(
                            "Listing network policies of app {name} in org {org} / space {space} as {user}..."
                        ));
                    }
                    vec![cc.app_by_name(name, &target.space.0).await?]
                }
                None => {
                    if !json {
                        ui.say(&format!("Listing network policies in org {org} / space {space} as {user}..."));
                    }
                    cc.apps_in_space(&target.space.0).await?
                }
            };
            let source_ids: Vec<String> = sources.iter().map(|a| a.guid.clone()).collect();
            let found = policies_from(&policies, &source_ids).await?;
            let rows = named_rows(&cc, sources, &found).await?;
            if *json {
                let body = serde_json::json!({ "policies": rows });
                let _ = writeln!(ui.out, "{}", serde_json::to_string_pretty(&body).unwrap_or_default());
                return Ok(());
            }
            ui.say("");
            let cells: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| vec![r.source, r.destination, r.protocol, r.ports, r.destination_space, r.destination_org])
                .collect();
            let _ = write!(
                ui.out,
                "{}",
                crate::table::render(
                    &["source", "destination", "protocol", "ports", "destination space", "destination org"],
                    &cells
                )
            );
            Ok(())
        }
        Command::Apply { file, prune, dry_run } => {
            let wanted = crate::apply::read(std::path::Path::new(file))?;
            ui.say(&format!("Applying network policies from {file} in org {org} / space {space} as {user}..."));
            let plan = crate::apply::plan(&cc, target, &policies, &wanted, *prune).await?;
            for p in &plan.create {
                ui.say(&format!("+ {}", plan.describe(p)));
            }
            for p in &plan.delete {
                ui.say(&format!("- {}", plan.describe(p)));
            }
            if plan.create.is_empty() && plan.delete.is_empty() {
                ui.say("Nothing to change.");
            }
            if !*dry_run {
                if !plan.create.is_empty() {
                    policies.create_policies(&Policies { policies: plan.create.clone() }).await.map_err(api_error)?;
                }
                if !plan.delete.is_empty() {
                    policies.delete_policies(&Policies { policies: plan.delete.clone() }).await.map_err(api_error)?;
                }
            } else {
                ui.say("(dry run: nothing was changed)");
            }
            ui.say("OK");
            ui.say("");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn err(spec: &Spec, s: &str) -> String {
        parse(spec, &args(s)).unwrap_err().to_string()
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_port("8080-8090").unwrap(), (8080, 8090));
        assert_eq!(parse_port("8090-8080").unwrap(), (8090, 8080), "order is the server's to check");
        assert_eq!(parse_port("0").unwrap(), (0, 0));
        for bad in ["x", "-1", "-1-1", "1-fooo"] {
            assert_eq!(
                parse_port(bad).unwrap_err().to_string(),
                "Incorrect Usage: PORT must be a positive integer",
                "{bad}"
            );
        }
        assert_eq!(
            parse_port("1-2-3").unwrap_err().to_string(),
            "Incorrect Usage: PORT syntax must match integer[-integer]"
        );
    }

    #[test]
    fn add_defaults_and_validation() {
        let Command::Add(a) = parse(&ADD, &args("front back")).unwrap() else { panic!() };
        assert_eq!((a.protocol.as_str(), a.start, a.end), ("tcp", 8080, 8080));
        let Command::Add(a) = parse(&ADD, &args("front back --protocol UDP --port 53 -s s2 -o o2")).unwrap() else {
            panic!()
        };
        assert_eq!(
            (a.protocol.as_str(), a.start, a.space.as_deref(), a.org.as_deref()),
            ("udp", 53, Some("s2"), Some("o2"))
        );
        assert_eq!(
            err(&ADD, ""),
            "Incorrect Usage: the required arguments `SOURCE_APP` and `DESTINATION_APP` were not provided"
        );
        assert_eq!(err(&ADD, "front"), "Incorrect Usage: the required argument `DESTINATION_APP` was not provided");
        assert_eq!(
            err(&ADD, "a b --port 1"),
            "Incorrect Usage: --protocol and --port flags must be specified together"
        );
        assert_eq!(err(&ADD, "a b --protocol icmp --port 1"), "Incorrect Usage: PROTOCOL must be \"tcp\" or \"udp\"");
        assert_eq!(
            err(&ADD, "a b -o org"),
            "Incorrect Usage: A space must be provided when an org is provided, but the '-s' flag was not specified."
        );
        assert_eq!(err(&ADD, "a b c d"), "Incorrect Usage: unexpected argument \"c d\"");
        assert_eq!(err(&ADD, "a b -x 1"), "Incorrect Usage: unknown flag `x'");
        assert!(matches!(parse(&ADD, &args("a b --port 1")), Err(CommandError::Usage(_))));
        assert!(matches!(parse(&ADD, &args("a b -x 1")), Err(CommandError::FlagUsage(_))));
    }

    #[test]
    fn remove_needs_protocol_and_port() {
        assert_eq!(err(&REMOVE, "a b --port 1"), "Incorrect Usage: the required flag `--protocol' was not specified");
        assert_eq!(err(&REMOVE, "a b --protocol tcp"), "Incorrect Usage: the required flag `--port' was not specified");
        assert!(matches!(parse(&REMOVE, &args("a b --protocol tcp --port=8080-8090")), Ok(Command::Remove(_))));
    }

    #[test]
    fn list_takes_source_only() {
        assert_eq!(
            parse(&LIST, &args("--source front")).unwrap(),
            Command::List { source: Some("front".into()), json: false }
        );
        assert_eq!(parse(&LIST, &args("--output json")).unwrap(), Command::List { source: None, json: true });
        assert_eq!(err(&LIST, "--output xml"), "Incorrect Usage: OUTPUT must be \"table\" or \"json\"");
        assert_eq!(err(&LIST, "--port 1"), "Incorrect Usage: unknown flag `port'");
    }

    #[test]
    fn apply_and_check() {
        assert_eq!(
            parse(&APPLY, &args("p.yml --prune --dry-run")).unwrap(),
            Command::Apply { file: "p.yml".into(), prune: true, dry_run: true }
        );
        assert_eq!(err(&APPLY, ""), "Incorrect Usage: the required argument `FILE` was not provided");
        assert!(matches!(parse(&CHECK, &args("a b --protocol tcp --port 80")), Ok(Command::Check(_))));
        assert_eq!(err(&CHECK, "a b --port 80"), "Incorrect Usage: the required flag `--protocol' was not specified");
    }

    #[test]
    fn names_do_not_collide_with_cf_builtins() {
        let builtin_aliases = "a brs bs co create-quota create-domain cs csb csk csp cups d delete-quota delete-domain ds dsk e h l lo m quotas quota o pw p rg stage rs ro r rt revg sk s se set-quota srevg ssevg sevg st sp t urs us ue update-quota uups";
        let builtins = [
            "network-policies",
            "add-network-policy",
            "remove-network-policy",
            "route-policies",
            "add-route-policy",
            "remove-route-policy",
        ];
        for s in ALL {
            assert!(!builtins.contains(&s.name));
            assert!(!builtin_aliases.split_whitespace().any(|a| a == s.name));
        }
    }

    #[test]
    fn help_looks_like_cf() {
        let h = help(&ADD, "cf");
        assert!(h.starts_with("NAME:\n   c2c-add-policy - Create policy to allow direct network traffic from one app to another\n\nUSAGE:\n   cf c2c-add-policy SOURCE_APP"));
        assert!(h.contains(
            "\nOPTIONS:\n   --port          Port or range of ports for connection to destination app (Default: 8080)\n"
        ));
        assert!(h.contains("   -o              The org of the destination app (Default: targeted org)\n"));
    }
}
