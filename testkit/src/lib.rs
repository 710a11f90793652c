//! Test doubles for the parts of Cloud Foundry that c2c talks to: UAA (tokens) and Cloud
//! Controller v3 (orgs, spaces, apps, roles). They are small HTTP servers on loopback that
//! behave like the originals for the requests c2c makes. Tests, examples and
//! `policy-server --dev` use them; the production server never does.

pub mod cloud_controller;
pub mod keys;
pub mod pki;
pub mod proxy;
pub mod server;
pub mod server_process;
pub mod uaa;

pub use cloud_controller::{App, CloudController, Fixture, Org, Role, SecurityGroup, Space};
pub use keys::SigningAlg;
pub use uaa::{Claims, OAuthClient, TokenRequest, Uaa, User};

/// Guids of the standard world's apps `app-1`, `app-2` and `app-3`.
pub const APP_1: &str = "a0000000-0000-4000-8000-000000000001";
pub const APP_2: &str = "a0000000-0000-4000-8000-000000000002";
pub const APP_3: &str = "a0000000-0000-4000-8000-000000000003";

/// The OAuth client the policy server uses for Cloud Controller lookups and `/check_token`.
pub const POLICY_SERVER_CLIENT: &str = "network-policy";
pub const POLICY_SERVER_SECRET: &str = "network-policy-secret";

/// UAA and Cloud Controller doubles started together with a small standard world:
///
/// * org `org-1` (`o`) with spaces `space-1` (`s1`) and `space-2` (`s2`);
/// * apps named `app-1`, `app-2` in `space-1`, `app-3` in `space-2`, with the guids
///   [`APP_1`], [`APP_2`], [`APP_3`] (lowercase UUIDs, as Cloud Controller's always are);
/// * users `admin` (network.admin), `alice` (network.write, developer in `space-1`),
///   `carol` (network.write, developer in `space-1` and `space-2`), `bob` (no network scope,
///   developer in `space-1`); every password is `password`;
/// * the client `network-policy` that the policy server uses.
#[derive(Clone, Debug)]
pub struct Cf {
    pub uaa: Uaa,
    pub cc: CloudController,
}

impl Cf {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(SigningAlg::Rs256).await
    }

    pub async fn start_with(alg: SigningAlg) -> std::io::Result<Self> {
        let uaa = Uaa::builder()
            .signing(alg)
            .user("admin", "password", &["openid", "cloud_controller.admin", "network.admin"])
            .user("alice", "password", &["openid", "cloud_controller.read", "network.write"])
            .user("carol", "password", &["openid", "cloud_controller.read", "network.write"])
            .user("bob", "password", &["openid", "cloud_controller.read"])
            .client(POLICY_SERVER_CLIENT, POLICY_SERVER_SECRET, &["uaa.resource", "cloud_controller.admin_read_only"])
            .start()
            .await?;
        let cc = CloudController::start(&uaa, standard_fixture()).await?;
        Ok(Cf { uaa, cc })
    }
}

/// The standard world described on [`Cf`].
pub fn standard_fixture() -> Fixture {
    let org = |g: &str, n: &str| Org { guid: g.into(), name: n.into() };
    let space = |g: &str, n: &str| Space { guid: g.into(), name: n.into(), org: "org-1".into() };
    let app =
        |g: &str, n: &str, s: &str| App { guid: g.into(), name: n.into(), space: s.into(), state: "STARTED".into() };
    let dev =
        |u: &str, s: &str| Role { kind: "space_developer".into(), user: u.into(), space: Some(s.into()), org: None };
    Fixture {
        orgs: vec![org("org-1", "o")],
        spaces: vec![space("space-1", "s1"), space("space-2", "s2")],
        apps: vec![app(APP_1, "app-1", "space-1"), app(APP_2, "app-2", "space-1"), app(APP_3, "app-3", "space-2")],
        roles: vec![
            dev("alice-guid", "space-1"),
            dev("carol-guid", "space-1"),
            dev("carol-guid", "space-2"),
            dev("bob-guid", "space-1"),
        ],
        security_groups: vec![],
    }
}
