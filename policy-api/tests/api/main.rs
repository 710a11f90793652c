//! policy-server API tests: one test binary (fewer links on a small CI box), the same suite
//! for SQLite, PostgreSQL and MariaDB.

mod harness;
mod hygiene;
mod spec;
mod suite;

macro_rules! for_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { use crate::harness::Backend; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::suite::$name(Backend::Sqlite).await } )* }
        mod postgres { use crate::harness::Backend; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::suite::$name(Backend::Postgres).await } )* }
        mod mysql { use crate::harness::Backend; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::suite::$name(Backend::Mysql).await } )* }
    };
}

for_backends!(
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
    cleanup,
    info_headers_and_metrics,
    check_token_mode,
    key_rotation,
    unknown_kids_are_rate_limited,
    tags_are_unique_under_concurrency,
    replicas_migrate_together,
);

#[tokio::test]
async fn es256_tokens_are_accepted() {
    let cf = testkit::Cf::start_with(testkit::SigningAlg::Es256).await.unwrap();
    let db = harness::TestDb::create(harness::Backend::Sqlite).await;
    let server = policy_api::Server::start(&harness::config_for(&cf, &db)).await.unwrap();
    let client = policy_client::Client::new_with_token(&server.url(), &cf.uaa.user_token("admin")).unwrap();
    assert_eq!(client.whoami().await.unwrap().into_inner().subject, "admin");
    server.shutdown().await;
}
