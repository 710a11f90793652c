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
    another_replicas_writes_are_followed_from_the_change_log,
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
    cloud_controller_fan_out_is_bounded,
    reads_follow_writes_across_replicas,
    ids_must_be_the_callers_apps,
    new_tags_per_caller_are_budgeted,
    quota_holds_under_concurrency,
    cleanup,
    cleanup_cannot_wipe_the_foundation,
    info_headers_and_metrics,
    check_token_mode,
    key_rotation,
    unknown_kids_are_rate_limited,
    withdrawn_keys_stop_working,
    audiences_are_checked_when_configured,
    tags_are_unique_under_concurrency,
    concurrent_clients_lose_nothing,
    replicas_migrate_together,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_wakes_only_the_watches_it_concerns() {
    internal::a_change_wakes_only_the_watches_it_concerns(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_change_wakes_only_the_watches_it_concerns() {
    internal::a_change_wakes_only_the_watches_it_concerns(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_watch() {
    internal::shutdown_answers_every_watch().await
}

/// A token's `sub` goes into Cloud Controller's `user_guids=` filter: a comma, a space or an
/// empty subject is refused before any lookup, even in a correctly signed token.
#[tokio::test]
async fn token_subjects_that_would_split_a_lookup_are_refused() {
    use base64::Engine;
    let h = harness::Harness::start(harness::Backend::Sqlite).await;
    let alice = h.cf.uaa.user_token("alice");
    let payload = alice.split('.').nth(1).unwrap();
    let claims: testkit::Claims =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let cc_before = h.cf.cc.requests();
    for sub in ["alice-guid,carol-guid", "", "alice-guid carol-guid", "alice-guid\n"] {
        let token = h.cf.uaa.sign(&testkit::Claims { sub: sub.into(), ..claims.clone() }, None);
        let err = h.with_token(&token).list_policies(None, None, None).await.unwrap_err();
        assert_eq!(policy_client::error_status(&err), Some(401), "{sub:?}");
        assert_eq!(policy_client::error_message(&err), Some("failed to verify token with uaa"));
    }
    assert_eq!(h.cf.cc.requests(), cc_before, "no Cloud Controller lookup for a refused subject");
    h.with_token(&h.cf.uaa.sign(&claims, None)).list_policies(None, None, None).await.unwrap();
}

/// `Server::start` refuses a cells' API without client certificates even when the
/// configuration was never validated.
#[tokio::test]
async fn internal_api_without_client_auth_is_refused() {
    let h = harness::Harness::start_internal(harness::Backend::Sqlite, |_| {}).await;
    let mut config = h.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.internal.listen = "127.0.0.1:0".parse().unwrap();
    config.internal.tls.as_mut().unwrap().client_ca_file = None;
    let err = policy_api::Server::start(&config).await.err().expect("start must fail").to_string();
    assert!(err.contains("internal.tls.client_ca_file"), "{err}");
}

/// The SQLite database (and its WAL and lock files) is readable by its owner only.
#[tokio::test]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = harness::Harness::start(harness::Backend::Sqlite).await;
    h.admin().create_policies(&policy_client::types::Policies { policies: vec![] }).await.ok();
    let db = h.db.url.trim_start_matches("sqlite://").split('?').next().unwrap().to_string();
    for path in [db.clone(), format!("{db}-wal"), format!("{db}.migrate-lock")] {
        let mode = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{path} is {:o}", mode & 0o777);
    }
}

/// Thousands of half-sent requests (a slowloris) neither starve an authenticated listing
/// nor hold their sockets past the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_cannot_starve_the_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SLOW: usize = 3_000;
    let h = harness::Harness::start_with(harness::Backend::Sqlite, |c| c.limits.header_read_timeout_secs = 2).await;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut s = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
        s.write_all(b"GET /networking/v1/external/policies HTTP/1.1\r\nHost: policy-server\r\nAuthor").await.unwrap();
        slow.push(s);
    }
    let list = h.admin().list_policies(None, None, None).await.unwrap().into_inner();
    assert_eq!(list.total_policies, 0);
    // The server closes every half-sent request once the header timeout passes.
    for s in slow.iter_mut() {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "a half-sent request is still open after 60 s");
    }
}

/// A body that stops arriving fails at the body-read deadline with the usual 400.
#[tokio::test]
async fn trickled_bodies_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness::Harness::start_with(harness::Backend::Sqlite, |c| c.limits.body_read_timeout_secs = 1).await;
    let token = h.cf.uaa.user_token("admin");
    let mut s = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
    let head = format!(
        "POST /networking/v1/external/policies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"polic"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.ends_with(r#"{"error": "failed reading request body"}"#), "{text}");
}

/// Watches beyond `max_watches`, and other requests beyond `max_concurrent_requests`, are
/// answered 503 at once; parked watches take no request slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_cap_are_shed() {
    use tokio::io::AsyncWriteExt;
    let h = harness::Harness::start_internal(harness::Backend::Sqlite, |c| {
        c.limits.max_concurrent_requests = 3;
        c.limits.max_watches = 3;
    })
    .await;
    let url = format!("{}/networking/v1/internal/policies?id=app-1", h.internal_url());
    let http = h.cell_http(None, true);
    let etag = http.get(&url).send().await.unwrap().headers()["etag"].to_str().unwrap().to_string();
    let watch = |http: reqwest::Client| {
        let (url, etag) = (format!("{url}&wait=30s"), etag.clone());
        async move { http.get(&url).header("If-None-Match", etag).send().await }
    };
    let watches: Vec<_> = (0..3).map(|_| tokio::spawn(watch(http.clone()))).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while internal::watches_waiting() < 3 {
        assert!(std::time::Instant::now() < deadline, "the watches never started waiting");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let shed = watch(http.clone()).await.unwrap();
    assert_eq!(shed.status(), 503);
    assert!(shed.text().await.unwrap().contains("too many watches"));
    for _ in 0..5 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200, "3 parked watches hold no request slot");
    }
    for w in &watches {
        w.abort();
    }

    // Three creates whose bodies never finish hold the external API's three slots.
    let token = h.cf.uaa.user_token("admin");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
        let head = format!(
            "POST /networking/v1/external/policies HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let list = format!("{}/networking/v1/external/policies", h.server.url());
    let plain = reqwest::Client::new();
    loop {
        let r = plain.get(&list).bearer_auth(&token).send().await.unwrap();
        if r.status() == 503 {
            let body = r.text().await.unwrap();
            assert!(body.contains("too many requests in progress"), "{body}");
            break;
        }
        // The three requests may not all have reached the server yet.
        assert!(std::time::Instant::now() < deadline, "the held requests never took their slots");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(held);
}

/// A database password never shows: not in `ps` (the flag is refused), not in errors.
#[test]
fn database_passwords_stay_secret() {
    use std::process::Command;
    let url = "postgres://policy:s3cr3t@127.0.0.1:1/policy";
    let bin = env!("CARGO_BIN_EXE_policy-server");
    let out = Command::new(bin).args(["--database-url", url]).env_remove("C2C_DATABASE_URL").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("set C2C_DATABASE_URL"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
    let out = Command::new(bin).args(["--uaa-client-secret", "hunter2"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("set C2C_UAA_CLIENT_SECRET"));

    // From the environment it is taken, and the failure to connect does not print it.
    let dir = std::env::temp_dir().join(harness::unique_name());
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("c2c.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndatabase_connect_timeout_secs = 1\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .env("C2C_DATABASE_URL", url)
        .env("C2C_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "nothing listens on port 1: {all}");
    assert!(!all.contains("s3cr3t"), "{all}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The database stops answering (packets held by a proxy): requests fail within the request
/// deadline with a JSON 503, nothing half-written stays, and the server recovers by itself
/// once the database answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_fails_requests_cleanly() {
    use policy_client::types::{Policies, Policy, Protocol};
    use std::time::{Duration, Instant};
    let upstream = url::Url::parse(&harness::postgres_admin_url()).unwrap();
    let upstream_addr = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap_or(5432));
    let proxy = testkit::proxy::PausableProxy::start(upstream_addr.parse().unwrap()).await.unwrap();
    let h = harness::Harness::start_with(harness::Backend::Postgres, |c| {
        let mut url = url::Url::parse(&c.database_url.0).unwrap();
        url.set_port(Some(proxy.addr.port())).unwrap();
        c.database_url = url.as_str().into();
        c.limits.request_timeout_secs = 2;
    })
    .await;
    let admin = h.admin();
    let one = |port| Policies { policies: vec![Policy::new("a", "b", Protocol::Tcp, port, port)] };
    admin.create_policies(&one(1)).await.unwrap();

    proxy.pause();
    for attempt in [admin.create_policies(&one(2)).await.map(|_| ()), admin.list_tags().await.map(|_| ())] {
        let err = attempt.unwrap_err();
        assert_eq!(policy_client::error_status(&err), Some(503), "{err:?}");
    }
    proxy.resume();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(30);
    let listed = loop {
        match admin.list_policies(None, None, None).await {
            Ok(list) => break list.into_inner(),
            Err(e) => assert!(Instant::now() < deadline, "not back 30 s after the database: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("answering again {:?} after the database came back", back.elapsed());
    assert_eq!(listed.total_policies, 1, "the create that timed out left nothing behind");
    admin.create_policies(&one(3)).await.unwrap();
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

/// Many clients sending the same create at once (a script retried, a fleet of pipelines)
/// cost Cloud Controller one app lookup, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_lookups_share_one_cloud_controller_call() {
    use policy_client::types::{Policies, Policy, Protocol};
    let h = harness::Harness::start(harness::Backend::Sqlite).await;
    let alice = h.client("alice");
    let create = |src: &str, dst: &str| Policies { policies: vec![Policy::new(src, dst, Protocol::Tcp, 8080, 8080)] };
    // Her roles and her first app are cached first, so that only the lookup of the second
    // app is left to share.
    alice.create_policies(&create(testkit::APP_1, testkit::APP_1)).await.unwrap();
    let create = create(testkit::APP_1, testkit::APP_2);
    // Slow enough that all 20 requests are waiting on the first lookup.
    h.cf.cc.set_latency(std::time::Duration::from_millis(500));
    let before = h.cf.cc.requests_for("/v3/apps");
    let sends = (0..20).map(|_| alice.create_policies(&create));
    for answer in futures::future::join_all(sends).await {
        answer.unwrap();
    }
    assert_eq!(h.cf.cc.requests_for("/v3/apps") - before, 1, "one GET /v3/apps?guids= for 20 identical creates");
}
