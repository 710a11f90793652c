//! `c2c-check`: whether a policy allows traffic from one app to another, and which.

use super::{Kind, PolicyArgs, Session, Spec, Ui, policies_from, ports_text};
use crate::errors::CommandError;

pub const SPEC: Spec = Spec {
    kind: Kind::Check,
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

pub(crate) async fn run(s: &Session<'_>, a: &PolicyArgs, ui: &mut Ui<'_>) -> Result<(), CommandError> {
    let (src, dst, policy) = s.resolve(a, "Checking network policies", ui).await?;
    let existing = policies_from(&s.policies, std::slice::from_ref(&src.guid)).await?;
    let allowing = existing.iter().find(|p| {
        p.destination.id == dst.guid
            && p.destination.protocol == policy.destination.protocol
            && p.destination.ports.start <= a.start
            && a.start <= p.destination.ports.end
    });
    let Some(p) = allowing else {
        return Err(CommandError::Message(format!(
            "Not allowed: no policy lets {} reach {} on {} port {}.",
            a.source, a.destination, a.protocol, a.start
        )));
    };
    ui.say(&format!(
        "Allowed: {} -> {} {} {} by the policy for {} {}",
        a.source,
        a.destination,
        a.protocol,
        a.start,
        p.destination.protocol,
        ports_text(p.destination.ports.start, p.destination.ports.end)
    ));
    ui.say("OK");
    ui.say("");
    Ok(())
}
