//! policy-server API tests: one test binary (fewer links on a small CI box), the same suite
//! for SQLite, PostgreSQL and MariaDB.

mod harness;
mod hygiene;
mod internal;
mod spec;
mod suite;

macro_rules! for_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { use crate::harness::Backend; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::$name(Backend::Sqlite).await } )* }
        mod postgres { use crate::harness::Backend; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::$name(Backend::Postgres).await } )* }
        mod mysql { use crate::harness::Backend; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::$name(Backend::Mysql).await } )* }
    };
}

use internal::*;
use suite::*;

for_backends!(
    internal_policies_match_upstream,
    etags_and_304,
    watch_wakes_on_change_from_another_replica,
    tags_for_other_groups,
    security_groups_are_synced_and_paged,
    only_one_replica_holds_the_sync_lock,
    leases_like_silk,
    cells_act_only_for_themselves,
    lease_races_across_replicas,
    discovery_registrations,
    local_writes_publish_what_a_reload_would,
    create_list_and_idempotence,
    v0_create_and_delete_match_v1,
    filters,
    delete_and_tag_reuse,
    validation_errors_change_nothing,
    oversized_bodies,
    sql_metacharacters_are_data,
    authentication_failures,
    scopes_and_spaces,
    self_service,
    quota,
    ids_must_be_the_callers_apps,
    new_tags_per_caller_are_budgeted,
    quota_holds_under_concurrency,
    cleanup,
    info_headers_and_metrics,
    check_token_mode,
    key_rotation,
    unknown_kids_are_rate_limited,
    tags_are_unique_under_concurrency,
    replicas_migrate_together,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_watch() {
    internal::shutdown_answers_every_watch().await
}

#[tokio::test]
async fn es256_tokens_are_accepted() {
    let cf = testkit::Cf::start_with(testkit::SigningAlg::Es256).await.unwrap();
    let db = harness::TestDb::create(harness::Backend::Sqlite).await;
    let server = policy_api::Server::start(&harness::config_for(&cf, &db)).await.unwrap();
    let client = policy_client::Client::new_with_token(&server.url(), &cf.uaa.user_token("admin")).unwrap();
    assert_eq!(client.whoami().await.unwrap().into_inner().subject, "admin");
    server.shutdown().await;
}

/// `tls` in the config: the external API speaks HTTPS only and sends HSTS, as upstream's
/// `enable_tls`.
#[tokio::test]
async fn external_api_over_tls() {
    let dir = std::env::temp_dir().join(format!("c2c-tls-{}", std::process::id()));
    let ca = testkit::pki::TestCa::new(&dir, "ca");
    let server_cert = ca.server("policy-server", &[]);
    let cf = testkit::Cf::start().await.unwrap();
    let db = harness::TestDb::create(harness::Backend::Sqlite).await;
    let mut config = harness::config_for(&cf, &db);
    config.tls = Some(policy_api::tls::TlsFiles {
        cert_file: server_cert.cert.clone(),
        key_file: server_cert.key.clone(),
        client_ca_file: None,
    });
    let server = policy_api::Server::start(&config).await.unwrap();
    assert!(server.url().starts_with("https://"));

    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {}", cf.uaa.user_token("admin")).parse().unwrap());
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap())
        .default_headers(headers)
        .build()
        .unwrap();
    let client = policy_client::Client::new_with_client(&server.url(), http.clone());
    assert_eq!(client.whoami().await.unwrap().into_inner().subject, "admin");
    let resp = http.get(format!("{}/networking/v1/external/tags", server.url())).send().await.unwrap();
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000");

    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new().get(format!("http://{}/", server.addr)).send().await;
    assert!(plain.is_err(), "plain HTTP must not be served on the TLS port");
    server.shutdown().await;

    // A missing key file stops start-up with a message naming it.
    config.tls.as_mut().unwrap().key_file = dir.join("missing.key");
    let err = policy_api::Server::start(&config).await.err().expect("start must fail").to_string();
    assert!(err.contains("missing.key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
