//! `c2c-remove-policy` (cf's `remove-network-policy`).

use policy_client::types::Policies;

use super::{Kind, PolicyArgs, Session, Spec, Ui, api_error, policies_from};
use crate::errors::CommandError;

pub const SPEC: Spec = Spec {
    kind: Kind::Remove,
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

pub(crate) async fn run(s: &Session<'_>, a: &PolicyArgs, ui: &mut Ui<'_>) -> Result<(), CommandError> {
    let (src, _, policy) = s.resolve(a, "Removing network policy", ui).await?;
    let existing = policies_from(&s.policies, std::slice::from_ref(&src.guid)).await?;
    if existing.contains(&policy) {
        s.policies.delete_policies(&Policies { policies: vec![policy] }).await.map_err(api_error)?;
    } else {
        ui.say("Policy does not exist.");
    }
    ui.say("OK");
    ui.say("");
    Ok(())
}
