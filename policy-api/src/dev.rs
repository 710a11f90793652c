//! `policy-server --dev`: everything on one laptop, insecure by design. SQLite in memory,
//! the UAA and Cloud Controller test doubles on loopback, an admin token printed to use.

use std::net::SocketAddr;

use crate::config::{Config, LogFormat, Secret};

/// The doubles started for dev mode; keep them alive while the server runs.
pub struct DevWorld {
    pub cf: testkit::Cf,
    pub config: Config,
    /// Where the dev CA, server and cell certificates were written.
    pub pki_dir: std::path::PathBuf,
    pub cell_cert: testkit::pki::CertFiles,
}

impl Drop for DevWorld {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pki_dir);
    }
}

/// Why `--dev` must not run with these settings, if it must not. Dev mode has fake UAA and
/// Cloud Controller and prints tokens, so it refuses anything that could point it at real
/// data or expose it: a database other than in-memory SQLite, a config file, a listen
/// address off loopback, and any `C2C_*` environment variable (which would silently
/// override it).
pub fn refusals(
    config_file: bool,
    database_url: Option<&str>,
    listens: &[Option<SocketAddr>],
    other_overrides: &[(&str, bool)],
    env_names: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut out = Vec::new();
    if config_file {
        out.push("--config: dev mode uses its own configuration".to_string());
    }
    if let Some(url) = database_url
        && !(url.starts_with("sqlite::memory:") || url.contains("mode=memory"))
    {
        out.push("--database-url: dev mode runs on in-memory SQLite only".to_string());
    }
    for addr in listens.iter().flatten() {
        if !addr.ip().is_loopback() {
            out.push(format!("listen address {addr}: dev mode listens on loopback only"));
        }
    }
    for (flag, set) in other_overrides {
        if *set {
            out.push(format!("{flag}: dev mode talks to its own UAA and Cloud Controller doubles"));
        }
    }
    let mut env: Vec<String> = env_names.into_iter().filter(|k| k.starts_with("C2C_")).collect();
    env.sort();
    if !env.is_empty() {
        out.push(format!("environment {}: unset it for dev mode", env.join(", ")));
    }
    out
}

/// A config that talks to the doubles of `cf`, on loopback ports chosen by the system, with
/// the given database. Tests, benchmarks and `--dev` start from it.
pub fn config_for_doubles(cf: &testkit::Cf, database_url: &str) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        database_url: database_url.into(),
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

/// Starts the doubles, makes a throwaway CA for the cells' API, and returns a config
/// pointing at them. The cells' API listens on `internal_listen`.
pub async fn start(listen: SocketAddr, internal_listen: SocketAddr) -> std::io::Result<DevWorld> {
    let cf = testkit::Cf::start().await?;
    // A fresh directory only its owner can enter: the keys in it open the cells' API.
    // `create` (not `create_all`) fails on anything already there, such as a planted link.
    let pki_dir = std::env::temp_dir().join(format!("c2c-dev-pki-{}", uuid::Uuid::new_v4()));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&pki_dir)?;
    let ca = testkit::pki::TestCa::new(&pki_dir, "dev-ca");
    let server_cert = ca.server("policy-server", &[]);
    let cell_cert = ca.client("dev-cell");
    let mut config = Config { listen, log_format: LogFormat::Text, ..config_for_doubles(&cf, "sqlite::memory:") };
    config.internal.listen = internal_listen;
    config.internal.tls = Some(crate::tls::TlsFiles {
        cert_file: server_cert.cert,
        key_file: server_cert.key,
        client_ca_file: Some(server_cert.ca),
    });
    Ok(DevWorld { cf, config, pki_dir, cell_cert })
}

/// What `--dev` prints once the server is up.
pub fn banner(world: &DevWorld, api: &str, internal: Option<SocketAddr>, metrics: Option<SocketAddr>) -> String {
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
  Fake CC:          {cc}
                    app-1 {app1}, app-2 {app2} in space-1; app-3 {app3} in space-2
  Cells' API:       {internal}   (mTLS; a cell certificate is in {pki})

  Admin token (network.admin):
    export TOKEN='{admin}'
  alice's token (network.write, space developer in space-1):
    export ALICE='{alice}'

  Try:
    curl -s -H "Authorization: Bearer $TOKEN" -X POST {api}/networking/v1/external/policies \
      -d '{{"policies":[{{"source":{{"id":"{app1}"}},"destination":{{"id":"{app2}","protocol":"tcp","ports":{{"start":8080,"end":8080}}}}}}]}}'
    curl -s -H "Authorization: Bearer $TOKEN" {api}/networking/v1/external/policies
    curl -s -H "Authorization: Bearer $TOKEN" {api}/networking/v1/external/tags
    curl -s --cacert {ca} --cert {cert} --key {key} {internal}/networking/v1/internal/policies
  Stop with Ctrl-C.
"#,
        uaa = world.cf.uaa.url(),
        app1 = testkit::APP_1,
        app2 = testkit::APP_2,
        app3 = testkit::APP_3,
        cc = world.cf.cc.url(),
        internal = internal.map(|a| format!("https://{a}")).unwrap_or_else(|| "off".into()),
        pki = world.pki_dir.display(),
        ca = world.cell_cert.ca.display(),
        cert = world.cell_cert.cert.display(),
        key = world.cell_cert.key.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_mode_refuses_what_could_reach_production() {
        let lo: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        assert!(refusals(false, None, &[Some(lo), None], &[("--uaa-url", false)], vec!["HOME".into()]).is_empty());
        assert!(refusals(false, Some("sqlite::memory:"), &[], &[], Vec::<String>::new()).is_empty());
        let all = refusals(
            true,
            Some("postgres://prod-db/policy"),
            &[Some("0.0.0.0:4002".parse().unwrap()), Some("[::]:4003".parse().unwrap())],
            &[("--uaa-url", true), ("--cc-url", false)],
            vec!["C2C_DATABASE_URL".into(), "PATH".into(), "C2C_LISTEN".into()],
        );
        assert_eq!(all.len(), 6, "{all:#?}");
        assert!(all[1].contains("in-memory SQLite"));
        assert!(all[5].contains("C2C_DATABASE_URL, C2C_LISTEN"), "{}", all[5]);
        assert_eq!(
            refusals(false, Some("sqlite:///var/vcap/store/c2c/policy.db?mode=rwc"), &[], &[], Vec::<String>::new())
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn the_dev_pki_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let world = start("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mode = std::fs::metadata(&world.pki_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
