//! `c2c-add-policy` (cf's `add-network-policy`).

use policy_client::types::Policies;

use super::{Kind, PolicyArgs, Session, Spec, Ui, api_error};
use crate::errors::CommandError;

pub const SPEC: Spec = Spec {
    kind: Kind::Add,
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

pub(crate) async fn run(s: &Session<'_>, a: &PolicyArgs, ui: &mut Ui<'_>) -> Result<(), CommandError> {
    let (_, _, policy) = s.resolve(a, "Adding network policy", ui).await?;
    s.policies.create_policies(&Policies { policies: vec![policy] }).await.map_err(api_error)?;
    ui.say("OK");
    ui.say("");
    Ok(())
}
