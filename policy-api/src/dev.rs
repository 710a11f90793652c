//! `policy-server --dev`: everything on one laptop, insecure by design. SQLite in memory,
//! the UAA and Cloud Controller test doubles on loopback, an admin token printed to use.

use std::net::SocketAddr;

use crate::config::{Config, LogFormat, Secret};

/// The doubles started for dev mode; keep them alive while the server runs.
pub struct DevWorld {
    pub cf: testkit::Cf,
    pub config: Config,
}

/// A config that talks to the doubles of `cf`, on loopback ports chosen by the system, with
/// the given database. Tests, benchmarks and `--dev` start from it.
pub fn config_for_doubles(cf: &testkit::Cf, database_url: &str) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        database_url: database_url.to_string(),
        uaa: crate::config::UaaConfig {
            url: cf.uaa.url(),
            client_id: testkit::POLICY_SERVER_CLIENT.into(),
            client_secret: Secret(testkit::POLICY_SERVER_SECRET.into()),
            ..Default::default()
        },
        cloud_controller: crate::config::CloudControllerConfig { url: cf.cc.url(), ..Default::default() },
        ..Config::default()
    }
}

/// Starts the doubles and returns a config pointing at them.
pub async fn start(listen: SocketAddr) -> std::io::Result<DevWorld> {
    let cf = testkit::Cf::start().await?;
    let config = Config { listen, log_format: LogFormat::Text, ..config_for_doubles(&cf, "sqlite::memory:") };
    Ok(DevWorld { cf, config })
}

/// What `--dev` prints once the server is up.
pub fn banner(world: &DevWorld, api: &str, metrics: Option<SocketAddr>) -> String {
    let admin = world.cf.uaa.user_token("admin");
    let alice = world.cf.uaa.user_token("alice");
    let metrics = metrics.map(|m| format!("http://{m}/metrics")).unwrap_or_else(|| "off".into());
    format!(
        r#"
  *** policy-server --dev: INSECURE, FOR LOCAL USE ONLY ***
  In-memory SQLite (nothing is kept), fake UAA and Cloud Controller, tokens printed below.

  API:              {api}
  Metrics:          {metrics}
  Fake UAA:         {uaa}   (users admin, alice, carol, bob; password "password")
  Fake CC:          {cc}    (apps app-1, app-2 in space-1; app-3 in space-2)

  Admin token (network.admin):
    export TOKEN='{admin}'
  alice's token (network.write, space developer in space-1):
    export ALICE='{alice}'

  Try:
    curl -s -H "Authorization: Bearer $TOKEN" -X POST {api}/networking/v1/external/policies \
      -d '{{"policies":[{{"source":{{"id":"app-1"}},"destination":{{"id":"app-2","protocol":"tcp","ports":{{"start":8080,"end":8080}}}}}}]}}'
    curl -s -H "Authorization: Bearer $TOKEN" {api}/networking/v1/external/policies
    curl -s -H "Authorization: Bearer $TOKEN" {api}/networking/v1/external/tags
  Stop with Ctrl-C.
"#,
        uaa = world.cf.uaa.url(),
        cc = world.cf.cc.url(),
    )
}
