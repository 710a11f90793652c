//! The network-policy commands: the cf CLI's built-in `network-policies`,
//! `add-network-policy` and `remove-network-policy` (same flags, defaults, validation, output
//! and errors), registered under plugin names that do not collide with the built-ins, plus
//! `c2c-apply` and `c2c-check`. One module per command; this one parses command lines and
//! holds what the commands share.

pub mod add;
pub mod apply;
pub mod check;
pub mod list;
pub mod remove;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use policy_client::types::{Policy, Protocol};

use crate::cloud_controller::{BATCH, CloudController, Resource};
use crate::errors::CommandError;
use crate::flags::{parse_port, parse_protocol};
use crate::metadata::{CommandMetadata, Metadata};
use crate::target::Target;

/// Which command a [`Spec`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    List,
    Add,
    Remove,
    Apply,
    Check,
}

/// One command: its plugin name, the built-in name it mirrors, and its help.
pub struct Spec {
    pub kind: Kind,
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

pub const ALL: [&Spec; 5] = [&list::SPEC, &add::SPEC, &remove::SPEC, &apply::SPEC, &check::SPEC];

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
    if spec.kind == Kind::List {
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
    if spec.kind == Kind::Apply {
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
    let remove = matches!(spec.kind, Kind::Remove | Kind::Check);
    if remove {
        match (protocol.is_none(), port.is_none()) {
            (true, true) => {
                return Err(CommandError::FlagUsage(
                    "the required flags `--port' and `--protocol' were not specified".into(),
                ));
            }
            (true, false) => {
                return Err(CommandError::FlagUsage("the required flag `--protocol' was not specified".into()));
            }
            (false, true) => {
                return Err(CommandError::FlagUsage("the required flag `--port' was not specified".into()));
            }
            (false, false) => {}
        }
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
    Ok(match spec.kind {
        Kind::Remove => Command::Remove(args),
        Kind::Check => Command::Check(args),
        _ => Command::Add(args),
    })
}

/// Where a command writes: stdout and stderr (buffers in tests).
pub struct Ui<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

impl Ui<'_> {
    pub(crate) fn say(&mut self, line: &str) {
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

/// Longest any one HTTP call may take, so a stuck server cannot hang the CLI.
pub(crate) const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn http_client(target: &Target) -> Result<reqwest::Client, CommandError> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(target.ssl_disabled)
        .connect_timeout(std::time::Duration::from_secs(6))
        .timeout(REQUEST_TIMEOUT)
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
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| CommandError::Message(e.to_string()))?;
    Ok(policy_client::Client::new_with_client(base, client))
}

pub(crate) fn api_error(err: policy_client::Error<policy_client::types::Error>) -> CommandError {
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

pub(crate) fn protocol(p: &str) -> Protocol {
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
pub(crate) async fn policies_from(
    policies: &policy_client::Client,
    sources: &[String],
) -> Result<Vec<Policy>, CommandError> {
    let wanted: HashSet<&String> = sources.iter().collect();
    let mut found = Vec::new();
    for chunk in sources.chunks(BATCH) {
        let list = policies.list_policies(None, Some(&chunk.join(",")), None).await.map_err(api_error)?;
        found.extend(list.into_inner().policies.into_iter().filter(|p| wanted.contains(&p.source.id)));
    }
    Ok(found)
}

pub(crate) fn ports_text(start: i32, end: i32) -> String {
    if start == end { start.to_string() } else { format!("{start}-{end}") }
}

/// What every command works with: the target, its Cloud Controller and the policy API.
pub(crate) struct Session<'t> {
    pub target: &'t Target,
    pub cc: CloudController,
    pub policies: policy_client::Client,
}

impl Session<'_> {
    /// "`verb` from app A to app B in org O / space S as U..." as cf says it, then the two
    /// apps resolved and the policy they name.
    pub(crate) async fn resolve(
        &self,
        a: &PolicyArgs,
        verb: &str,
        ui: &mut Ui<'_>,
    ) -> Result<(Resource, Resource, Policy), CommandError> {
        let target = self.target;
        let (org, space, user) = (&target.org.1, &target.space.1, &target.user);
        let (dest_org, dest_space) = destination(&self.cc, target, a.org.as_deref(), a.space.as_deref()).await?;
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
        let src = self.cc.app_by_name(&a.source, &target.space.0).await?;
        let dst_space_guid = dest_space.as_ref().map(|s| s.guid.clone()).unwrap_or_else(|| target.space.0.clone());
        let dst = self.cc.app_by_name(&a.destination, &dst_space_guid).await?;
        let policy = Policy::new(&src.guid, &dst.guid, protocol(&a.protocol), a.start, a.end);
        Ok((src, dst, policy))
    }
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
    let session = Session { target, cc, policies };
    match command {
        Command::List { source, json } => list::run(&session, source.as_deref(), *json, ui).await,
        Command::Add(a) => add::run(&session, a, ui).await,
        Command::Remove(a) => remove::run(&session, a, ui).await,
        Command::Check(a) => check::run(&session, a, ui).await,
        Command::Apply { file, prune, dry_run } => apply::run(&session, file, *prune, *dry_run, ui).await,
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
    fn add_defaults_and_validation() {
        let Command::Add(a) = parse(&add::SPEC, &args("front back")).unwrap() else { panic!() };
        assert_eq!((a.protocol.as_str(), a.start, a.end), ("tcp", 8080, 8080));
        let Command::Add(a) = parse(&add::SPEC, &args("front back --protocol UDP --port 53 -s s2 -o o2")).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (a.protocol.as_str(), a.start, a.space.as_deref(), a.org.as_deref()),
            ("udp", 53, Some("s2"), Some("o2"))
        );
        assert_eq!(
            err(&add::SPEC, ""),
            "Incorrect Usage: the required arguments `SOURCE_APP` and `DESTINATION_APP` were not provided"
        );
        assert_eq!(
            err(&add::SPEC, "front"),
            "Incorrect Usage: the required argument `DESTINATION_APP` was not provided"
        );
        assert_eq!(
            err(&add::SPEC, "a b --port 1"),
            "Incorrect Usage: --protocol and --port flags must be specified together"
        );
        assert_eq!(
            err(&add::SPEC, "a b --protocol icmp --port 1"),
            "Incorrect Usage: PROTOCOL must be \"tcp\" or \"udp\""
        );
        assert_eq!(
            err(&add::SPEC, "a b -o org"),
            "Incorrect Usage: A space must be provided when an org is provided, but the '-s' flag was not specified."
        );
        assert_eq!(err(&add::SPEC, "a b c d"), "Incorrect Usage: unexpected argument \"c d\"");
        assert_eq!(err(&add::SPEC, "a b -x 1"), "Incorrect Usage: unknown flag `x'");
        assert!(matches!(parse(&add::SPEC, &args("a b --port 1")), Err(CommandError::Usage(_))));
        assert!(matches!(parse(&add::SPEC, &args("a b -x 1")), Err(CommandError::FlagUsage(_))));
    }

    #[test]
    fn remove_needs_protocol_and_port() {
        assert_eq!(
            err(&remove::SPEC, "a b"),
            "Incorrect Usage: the required flags `--port' and `--protocol' were not specified"
        );
        assert_eq!(
            err(&remove::SPEC, "a b --port 1"),
            "Incorrect Usage: the required flag `--protocol' was not specified"
        );
        assert_eq!(
            err(&remove::SPEC, "a b --protocol tcp"),
            "Incorrect Usage: the required flag `--port' was not specified"
        );
        assert!(matches!(parse(&remove::SPEC, &args("a b --protocol tcp --port=8080-8090")), Ok(Command::Remove(_))));
    }

    #[test]
    fn list_takes_source_only() {
        assert_eq!(
            parse(&list::SPEC, &args("--source front")).unwrap(),
            Command::List { source: Some("front".into()), json: false }
        );
        assert_eq!(parse(&list::SPEC, &args("--output json")).unwrap(), Command::List { source: None, json: true });
        assert_eq!(err(&list::SPEC, "--output xml"), "Incorrect Usage: OUTPUT must be \"table\" or \"json\"");
        assert_eq!(err(&list::SPEC, "--port 1"), "Incorrect Usage: unknown flag `port'");
    }

    #[test]
    fn apply_and_check() {
        assert_eq!(
            parse(&apply::SPEC, &args("p.yml --prune --dry-run")).unwrap(),
            Command::Apply { file: "p.yml".into(), prune: true, dry_run: true }
        );
        assert_eq!(err(&apply::SPEC, ""), "Incorrect Usage: the required argument `FILE` was not provided");
        assert!(matches!(parse(&check::SPEC, &args("a b --protocol tcp --port 80")), Ok(Command::Check(_))));
        assert_eq!(
            err(&check::SPEC, "a b --port 80"),
            "Incorrect Usage: the required flag `--protocol' was not specified"
        );
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
        let h = help(&add::SPEC, "cf");
        assert!(h.starts_with("NAME:\n   c2c-add-policy - Create policy to allow direct network traffic from one app to another\n\nUSAGE:\n   cf c2c-add-policy SOURCE_APP"));
        assert!(h.contains(
            "\nOPTIONS:\n   --port          Port or range of ports for connection to destination app (Default: 8080)\n"
        ));
        assert!(h.contains("   -o              The org of the destination app (Default: targeted org)\n"));
    }
}
