//! The cells' API (mTLS): upstream-compatible internal endpoints from the snapshot, ETag and
//! watch, subnet leases, discovery registrations, ASG sync.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use policy_client::types::{self, AcquireRequest, CellRegistrations, Lease, Policies, Policy, Protocol, Registration};
use policy_client::{Watched, error_message, error_status, watched};

use crate::harness::{Backend, Harness};

fn p(src: &str, dst: &str, port: i32) -> Policy {
    Policy::new(src, dst, Protocol::Tcp, port, port)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn internal_policies_match_upstream(backend: Backend) {
    let h = Harness::start_internal(backend, |_| {}).await;
    let cell = h.cell();
    assert_eq!(cell.internal_policies(None, None, None).await.unwrap().into_inner().total_policies, 0);
    let before: i64 = cell.internal_policies_last_updated().await.unwrap().into_inner();
    h.admin()
        .create_policies(&Policies {
            policies: vec![p("app-1", "app-2", 8080), p("app-3", "app-2", 9000), p("app-2", "app-3", 1)],
        })
        .await
        .unwrap();
    // Local writes reach the snapshot at once (no poll interval to wait for).
    eventually("the new policies", || async {
        cell.internal_policies(None, None, None).await.unwrap().into_inner().total_policies == 3
    })
    .await;
    let after: i64 = cell.internal_policies_last_updated().await.unwrap().into_inner();
    assert!(after > before, "policies_last_updated moves with writes");

    let list = cell.internal_policies(Some("app-1"), None, None).await.unwrap().into_inner();
    assert_eq!(list.total_policies, 1);
    let first = &list.policies[0];
    assert_eq!((first.source.tag.as_deref(), first.destination.tag.as_deref()), (Some("01"), Some("02")));
    let both = cell.internal_policies(Some("app-1,app-3"), None, None).await.unwrap().into_inner();
    assert_eq!(both.total_policies, 3);
    let none = cell.internal_policies(Some(""), None, None).await.unwrap().into_inner();
    assert_eq!(none.total_policies, 0);
    // Upstream's exact bytes for one policy.
    let (status, body, _) = h.raw(&cell, "GET", "/networking/v1/internal/policies?id=app-1", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"total_policies":1,"policies":[{"source":{"id":"app-1","tag":"01"},"destination":{"id":"app-2","tag":"02","protocol":"tcp","ports":{"start":8080,"end":8080}}}]}"#
    );
    // Any version segment works on the internal API, as upstream.
    let (status, _, _) = h.raw(&cell, "GET", "/networking/v0/internal/policies?id=app-1", vec![]).await;
    assert_eq!(status, 200);
}

pub async fn etags_and_304(backend: Backend) {
    let h = Harness::start_internal(backend, |_| {}).await;
    let cell = h.cell();
    h.admin().create_policies(&Policies { policies: vec![p("app-1", "app-2", 1)] }).await.unwrap();
    eventually("the policy", || async {
        cell.internal_policies(None, None, None).await.unwrap().into_inner().total_policies == 1
    })
    .await;
    let Watched::Changed { etag: Some(etag), .. } =
        watched(cell.internal_policies(Some("app-1"), None, None).await).unwrap()
    else {
        panic!("first request must answer 200 with an ETag")
    };
    assert!(matches!(
        watched(cell.internal_policies(Some("app-1"), None, Some(&etag)).await).unwrap(),
        Watched::NotModified
    ));
    // A change elsewhere does not change this cell's answer.
    h.admin().create_policies(&Policies { policies: vec![p("app-3", "app-3", 2)] }).await.unwrap();
    eventually("the other change in the snapshot", || async {
        cell.internal_policies(None, None, None).await.unwrap().into_inner().total_policies == 2
    })
    .await;
    assert!(matches!(
        watched(cell.internal_policies(Some("app-1"), None, Some(&etag)).await).unwrap(),
        Watched::NotModified
    ));
    // A change to it does.
    h.admin().create_policies(&Policies { policies: vec![p("app-2", "app-1", 3)] }).await.unwrap();
    eventually("a new ETag", || async {
        matches!(
            watched(cell.internal_policies(Some("app-1"), None, Some(&etag)).await).unwrap(),
            Watched::Changed { .. }
        )
    })
    .await;
    let (status, text, _) = h.raw(&cell, "GET", "/networking/v1/internal/policies?wait=soon", vec![]).await;
    assert_eq!((status, text.as_str()), (400, r#"{"error": "invalid wait \"soon\": use e.g. 30s or 500ms"}"#));
}

pub async fn watch_wakes_on_change_from_another_replica(backend: Backend) {
    let h = Harness::start_internal(backend, |_| {}).await;
    let mut config = h.config.clone();
    config.internal.listen = "127.0.0.1:0".parse().unwrap();
    let other = policy_api::Server::start(&config).await.unwrap();
    let cell = h.cell();
    let Watched::Changed { etag: Some(etag), .. } =
        watched(cell.internal_policies(Some("app-1"), None, None).await).unwrap()
    else {
        panic!("expected an answer")
    };
    // Nothing changes: the watch ends with 304 after the wait.
    let t = Instant::now();
    let r = watched(cell.internal_policies(Some("app-1"), Some("500ms"), Some(&etag)).await).unwrap();
    assert!(matches!(r, Watched::NotModified));
    assert!(t.elapsed() >= Duration::from_millis(450), "the request was held for the wait");

    let waiting = {
        let cell = cell.clone();
        let etag = etag.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = watched(cell.internal_policies(Some("app-1"), Some("20s"), Some(&etag)).await).unwrap();
            (r, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The change is written through the *other* replica.
    let admin = policy_client::Client::new_with_token(&other.url(), &h.cf.uaa.user_token("admin")).unwrap();
    admin.create_policies(&Policies { policies: vec![p("app-1", "app-2", 7)] }).await.unwrap();
    let (r, elapsed) = waiting.await.unwrap();
    let Watched::Changed { value, .. } = r else { panic!("the watch must answer with the change") };
    assert_eq!(value.total_policies, 1);
    assert!(elapsed < Duration::from_secs(5), "woken by the change, not by the wait: {elapsed:?}");
    other.shutdown().await;
}

pub async fn tags_for_other_groups(backend: Backend) {
    let h = Harness::start_internal(backend, |_| {}).await;
    let cell = h.cell();
    // The Go client sends `ID` and `Type`.
    let (status, body, _) =
        h.raw(&cell, "PUT", "/networking/v1/internal/tags", br#"{"ID":"router-guid","Type":"router"}"#.to_vec()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"id":"router-guid","tag":"01","type":"router"}"#));
    let again = cell.create_tag(&types::TagRequest { id: "router-guid".into(), type_: "router".into() }).await;
    assert_eq!(again.unwrap().into_inner().tag, "01");
    let err =
        cell.create_tag(&types::TagRequest { id: "router-guid".into(), type_: "other".into() }).await.unwrap_err();
    assert_eq!(error_status(&err), Some(409));
    assert_eq!(error_message(&err), Some("group router-guid exists with type router; a policy needs an app group"));
    let (status, body, _) = h.raw(&cell, "PUT", "/networking/v1/internal/tags", b"{nope".to_vec()).await;
    assert_eq!((status, body.as_str()), (400, r#"{"error": "failed parsing request body"}"#));
    // Empty ids or types, and ids that would split, get no tag.
    for bad in [
        r#"{"id":"","type":null}"#,
        r#"{"id":"x","type":""}"#,
        r#"{"id":"a,b","type":"router"}"#,
        r#"{"id":"a b","type":"router"}"#,
    ] {
        let (status, _, _) = h.raw(&cell, "PUT", "/networking/v1/internal/tags", bad.as_bytes().to_vec()).await;
        assert_eq!(status, 400, "{bad}");
    }
    // Another case of the id: the same group where the database ignores case (409 instead of
    // a retried collision and a 500), another group elsewhere.
    let upper = cell.create_tag(&types::TagRequest { id: "ROUTER-GUID".into(), type_: "router".into() }).await;
    match backend {
        Backend::Mysql => {
            let err = upper.unwrap_err();
            assert_eq!(error_status(&err), Some(409));
            assert!(error_message(&err).unwrap().contains("differs only in case"), "{err:?}");
            let err = h
                .admin()
                .create_policies(&Policies { policies: vec![p("Router-Guid", "app-1", 1)] })
                .await
                .unwrap_err();
            assert_eq!(error_status(&err), Some(409), "{err:?}");
        }
        _ => assert_eq!(upper.unwrap().into_inner().tag, "02"),
    }
    // Shown on the external tags listing; an app policy with that id is a conflict.
    let tags = h.admin().list_tags().await.unwrap().into_inner().tags;
    assert_eq!(tags.len(), if backend == Backend::Mysql { 1 } else { 2 });
    let err = h.admin().create_policies(&Policies { policies: vec![p("router-guid", "app-1", 1)] }).await.unwrap_err();
    assert_eq!(error_status(&err), Some(409));
}

pub async fn security_groups_are_synced_and_paged(backend: Backend) {
    let h = Harness::start_internal(backend, |_| {}).await;
    let rule = serde_json::json!({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "443"});
    let sg = |guid: &str, running: bool, spaces: &[&str]| testkit::SecurityGroup {
        guid: guid.into(),
        name: format!("{guid}-name"),
        rules: vec![rule.clone()],
        running_default: running,
        staging_default: false,
        running_spaces: spaces.iter().map(|s| s.to_string()).collect(),
        staging_spaces: vec![],
    };
    h.cf.cc.put_security_group(sg("sg-1", true, &[]));
    h.cf.cc.put_security_group(sg("sg-2", false, &["space-1"]));
    h.cf.cc.put_security_group(sg("sg-3", false, &["space-2"]));
    let cell = h.cell();
    eventually("three synced groups", || async {
        cell.internal_security_groups(None, None, Some("space-1,space-2"), None, None)
            .await
            .unwrap()
            .into_inner()
            .security_groups
            .len()
            == 3
    })
    .await;
    let global = cell.internal_security_groups(None, None, None, None, None).await.unwrap().into_inner();
    assert_eq!(global.security_groups.len(), 1);
    assert_eq!(
        global.security_groups[0].rules,
        r#"[{"protocol":"tcp","destination":"10.0.0.0/8","ports":"443","type":0,"code":0,"description":"","log":false}]"#
    );
    let page =
        cell.internal_security_groups(None, Some("2"), Some("space-1,space-2"), None, None).await.unwrap().into_inner();
    assert_eq!(page.security_groups.len(), 2);
    assert!(page.next > 0);
    let next = page.next.to_string();
    let rest = cell
        .internal_security_groups(Some(&next), Some("2"), Some("space-1,space-2"), None, None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rest.security_groups.len(), rest.next), (1, 0));
    let err = cell.internal_security_groups(Some("x"), None, None, None, None).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(400), Some("invalid value for 'from' parameter")));
    let err = cell.internal_security_groups(None, Some("-1"), None, None, None).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(400), Some("invalid value for 'limit' parameter")));
    let empty = cell
        .internal_security_groups(Some(""), Some(""), Some("space-1,space-2"), None, None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.security_groups.len(), 3, "empty values mean absent");
    // Deletions in Cloud Controller are mirrored.
    h.cf.cc.delete_security_group("sg-3");
    eventually("the deletion", || async {
        cell.internal_security_groups(None, None, Some("space-2"), None, None)
            .await
            .unwrap()
            .into_inner()
            .security_groups
            .len()
            == 1
    })
    .await;
}

pub async fn only_one_replica_holds_the_sync_lock(backend: Backend) {
    let h = Harness::start(backend).await;
    let store = &h.server.state.store;
    let ttl = Duration::from_secs(2);
    assert!(store.try_lock("asg-syncer", "a", ttl).await.unwrap());
    assert!(!store.try_lock("asg-syncer", "b", ttl).await.unwrap());
    assert!(store.try_lock("asg-syncer", "a", ttl).await.unwrap(), "the holder renews");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(store.try_lock("asg-syncer", "b", ttl).await.unwrap(), "an expired lock can be taken");
}

pub async fn leases_like_silk(backend: Backend) {
    let h = Harness::start_internal(backend, |c| {
        c.internal.overlay_network = "10.255.0.0/22".into();
        c.internal.lease_expiration_secs = 3;
    })
    .await;
    let cell = h.cell();
    let acquire = |ip: &str| AcquireRequest { underlay_ip: ip.into(), single_overlay_ip: None };
    let a = cell.acquire_lease(&acquire("10.0.0.1")).await.unwrap().into_inner();
    assert!(["10.255.1.0/24", "10.255.2.0/24", "10.255.3.0/24"].contains(&a.overlay_subnet.as_str()));
    let octet = a.overlay_subnet.split('.').nth(2).unwrap().parse::<u8>().unwrap();
    assert_eq!(a.overlay_hardware_addr, format!("ee:ee:0a:ff:{octet:02x}:00"));
    assert_eq!(cell.acquire_lease(&acquire("10.0.0.1")).await.unwrap().into_inner(), a, "same cell, same lease");
    cell.acquire_lease(&acquire("10.0.0.2")).await.unwrap();
    cell.acquire_lease(&acquire("10.0.0.3")).await.unwrap();
    let err = cell.acquire_lease(&acquire("10.0.0.4")).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(409), Some("no lease available")));
    let err = cell.acquire_lease(&acquire("not-an-ip")).await.unwrap_err();
    assert_eq!(error_status(&err), Some(409));
    assert_eq!(cell.list_leases().await.unwrap().into_inner().leases.len(), 3);

    let leases = cell.list_leases().await.unwrap().into_inner().leases;
    let other = leases.iter().find(|l| l.underlay_ip == "10.0.0.2").unwrap().clone();
    let wrong = Lease { underlay_ip: a.underlay_ip.clone(), ..other.clone() };
    let err = cell.renew_lease(&wrong).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(409), Some("lease mismatch")));
    // Attacks on the renewal (silk re-creates a lease it lost, so renewal is a way in):
    // another cell's exact subnet for a new underlay address, half of it, a foreign MAC.
    let (base, _) = other.overlay_subnet.split_once('/').unwrap();
    let half = format!("{}/25", base.rsplit_once('.').unwrap().0.to_string() + ".128");
    let attacks = [
        (Lease { underlay_ip: "10.0.0.66".into(), ..other.clone() }, "lease mismatch".to_string()),
        (
            Lease { underlay_ip: "10.0.0.66".into(), overlay_subnet: half.clone(), ..other.clone() },
            format!("{half} is not a subnet of the overlay pool"),
        ),
        (
            Lease { overlay_hardware_addr: "aa:bb:cc:dd:ee:ff".into(), ..a.clone() },
            format!("aa:bb:cc:dd:ee:ff is not the hardware address of {}", a.overlay_subnet),
        ),
        (
            Lease { overlay_subnet: "10.255.9.0/24".into(), ..a.clone() },
            "10.255.9.0/24 is not a subnet of the overlay pool".to_string(),
        ),
    ];
    for (lease, message) in attacks {
        let err = cell.renew_lease(&lease).await.unwrap_err();
        assert_eq!((error_status(&err), error_message(&err)), (Some(409), Some(message.as_str())), "{lease:?}");
    }
    let after = cell.list_leases().await.unwrap().into_inner().leases;
    assert_eq!(after.len(), 3, "no lease was added or changed: {after:?}");
    cell.release_lease(&types::ReleaseRequest { underlay_ip: "10.0.0.3".into() }).await.unwrap();
    cell.release_lease(&types::ReleaseRequest { underlay_ip: "10.0.0.3".into() }).await.unwrap();
    cell.acquire_lease(&acquire("10.0.0.4")).await.unwrap();

    // Leases expire unless renewed (times are whole seconds, so no fixed wait is exact):
    // `a` is renewed until the others have expired. An expired lease goes to a new cell when
    // the pool is full.
    eventually("only the renewed lease is active", || async {
        cell.renew_lease(&a).await.unwrap();
        let active: Vec<String> =
            cell.list_leases().await.unwrap().into_inner().leases.into_iter().map(|l| l.underlay_ip).collect();
        active == vec!["10.0.0.1".to_string()]
    })
    .await;
    let taken = cell.acquire_lease(&acquire("10.0.0.9")).await.unwrap().into_inner();
    assert_ne!(taken.overlay_subnet, a.overlay_subnet, "the renewed lease is kept");
    // A renew for a lease the store lost re-creates it (controller database loss heals).
    cell.release_lease(&types::ReleaseRequest { underlay_ip: "10.0.0.1".into() }).await.unwrap();
    cell.renew_lease(&a).await.unwrap();
    assert!(cell.list_leases().await.unwrap().into_inner().leases.contains(&a));
}

pub async fn lease_races_across_replicas(backend: Backend) {
    let h = Harness::start_internal(backend, |_| {}).await;
    let mut config = h.config.clone();
    config.internal.listen = "127.0.0.1:0".parse().unwrap();
    let other = policy_api::Server::start(&config).await.unwrap();
    let urls = [h.internal_url(), format!("https://{}", other.internal_addr.unwrap())];
    let http = h.cell_http(None, true);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = policy_client::Client::new_with_client(&urls[i % 2], http.clone());
        tasks.push(tokio::spawn(async move {
            client
                .acquire_lease(&AcquireRequest { underlay_ip: format!("10.0.1.{}", i + 1), single_overlay_ip: None })
                .await
                .expect("acquire under contention")
                .into_inner()
        }));
    }
    let mut subnets = HashSet::new();
    for t in tasks {
        assert!(subnets.insert(t.await.unwrap().overlay_subnet), "two cells got one subnet");
    }
    assert_eq!(subnets.len(), 50);
    other.shutdown().await;
}

pub async fn discovery_registrations(backend: Backend) {
    let h = Harness::start_internal(backend, |_| {}).await;
    let cell = h.cell();
    let reg = |host: &str, ip: &str| Registration { hostname: host.into(), ip: ip.into() };
    cell.register_cell(
        "cell-1",
        &CellRegistrations { ttl_seconds: 60, registrations: vec![reg("app-b.apps.internal", "10.255.1.2")] },
    )
    .await
    .unwrap();
    cell.register_cell(
        "cell-2",
        &CellRegistrations { ttl_seconds: 2, registrations: vec![reg("App-B.apps.internal.", "10.255.2.2")] },
    )
    .await
    .unwrap();
    eventually("both cells' registrations", || async {
        let sdc = cell.get_registration("app-b.apps.internal").await.unwrap().into_inner();
        let ips: Vec<String> = sdc.hosts.iter().map(|h| h.ip_address.clone()).collect();
        ips == vec!["10.255.1.2", "10.255.2.2"]
    })
    .await;
    let (_, body, _) = h.raw(&cell, "GET", "/v1/registration/nobody.apps.internal", vec![]).await;
    assert_eq!(body, r#"{"env":"","hosts":[],"service":""}"#);

    let Watched::Changed { etag: Some(etag), value } = watched(cell.list_registrations(None, None).await).unwrap()
    else {
        panic!("expected the table")
    };
    assert_eq!(value.registrations.len(), 1);
    // cell-2 stops refreshing: its registration expires and is pruned; watchers hear of it.
    let t = Instant::now();
    let r = watched(cell.list_registrations(Some("20s"), Some(&etag)).await).unwrap();
    let Watched::Changed { value, .. } = r else { panic!("the expiry must wake the watch") };
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(value.registrations[0].ips, vec!["10.255.1.2"]);

    let err = cell
        .register_cell(
            "cell-3",
            &CellRegistrations { ttl_seconds: 60, registrations: vec![reg("bad name!", "10.0.0.1")] },
        )
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), Some(400));
    let err = cell
        .register_cell(
            "cell-3",
            &CellRegistrations { ttl_seconds: 60, registrations: vec![reg("a.apps.internal", "nope")] },
        )
        .await
        .unwrap_err();
    assert_eq!(error_status(&err), Some(400));
    cell.deregister_cell("cell-1").await.unwrap();
    eventually("an empty table", || async {
        cell.list_registrations(None, None).await.unwrap().into_inner().registrations.is_empty()
    })
    .await;
}

/// Without a client certificate, or with one from another CA, the handshake fails; plain
/// HTTP gets nothing either.
#[tokio::test]
async fn mtls_refuses_strangers() {
    let h = Harness::start_internal(Backend::Sqlite, |_| {}).await;
    let url = format!("{}/networking/v1/internal/policies", h.internal_url());
    assert_eq!(h.cell_http(None, true).get(&url).send().await.unwrap().status(), 200);
    assert!(h.cell_http(None, false).get(&url).send().await.is_err(), "no client certificate");
    let dir = std::env::temp_dir().join(crate::harness::unique_name());
    let stranger = testkit::pki::TestCa::new(&dir, "other-ca");
    assert!(h.cell_http(Some(&stranger), true).get(&url).send().await.is_err(), "certificate from another CA");
    let plain = format!("http://{}/networking/v1/internal/policies", h.server.internal_addr.unwrap());
    assert!(reqwest::Client::new().get(&plain).send().await.is_err(), "plain HTTP");
    // Each refusal is counted by its reason (and logged with the peer).
    for reason in ["no_certificate", "bad_certificate", "not_tls"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while refusals(reason) < 1 {
            assert!(Instant::now() < deadline, "no {reason} refusal counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `c2c_tls_handshake_failures_total{reason}` from this process's recorder.
fn refusals(reason: &str) -> u64 {
    let line = format!("c2c_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    let text = policy_api::server::prometheus().render();
    text.lines().find_map(|l| l.strip_prefix(line.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Every route of the internal table answers (no 404/405) through mTLS.
#[tokio::test]
async fn every_internal_route_is_routed() {
    let h = Harness::start_internal(Backend::Sqlite, |_| {}).await;
    let http = h.cell_http(None, true);
    for (method, path) in crate::spec::internal_routes() {
        let path = path.replace("{cell}", "c1").replace("{hostname}", "a.apps.internal");
        let resp = http.request(method.parse().unwrap(), format!("{}{path}", h.internal_url())).send().await.unwrap();
        assert!(![404, 405].contains(&resp.status().as_u16()), "{method} {path} answered {}", resp.status());
        assert_eq!(resp.headers()["strict-transport-security"], "max-age=31536000");
    }
}

/// A local write reaches the snapshot from what it changed, without reading every policy
/// back, and the result is exactly what a reload gives; a write through another replica in
/// between makes it read everything again instead.
/// The snapshot holds what reading the store gives: the same versions, and the same policies
/// in the same order with the same tags.
async fn snapshot_matches_store(
    snapshots: &policy_api::snapshot::Snapshots,
    store: &policy_api::store::Store,
    what: String,
) {
    let current = snapshots.current();
    assert_eq!(current.versions, store.versions().await.unwrap(), "{what}: versions");
    assert_eq!(
        current.policies.iter().cloned().collect::<Vec<_>>(),
        store.list(&policy_api::policy::PolicyFilter::All).await.unwrap(),
        "{what}: policies"
    );
}

pub async fn local_writes_publish_what_a_reload_would(backend: Backend) {
    use policy_api::policy::{Policy as StoredPolicy, Protocol as StoredProtocol};
    use policy_api::snapshot::Snapshots;
    use policy_api::store::{Store, StoreOptions};

    let db = crate::harness::TestDb::create(backend).await;
    let store = Store::connect(&db.url, &StoreOptions::default()).await.unwrap();
    // The loader only runs when asked: what the test sees comes from `written`.
    let (snapshots, loader) = Snapshots::start(store.clone(), Duration::from_secs(3600)).await.unwrap();
    let sp = |s: &str, d: &str, port: u16| StoredPolicy::new(s, d, StoredProtocol::Tcp, port, port);
    let same_as_reload = |what: &'static str| snapshot_matches_store(&snapshots, &store, what.to_string());

    let w = store.create(&[sp("a", "b", 80), sp("a", "c", 81), sp("a", "b", 80)], Default::default()).await.unwrap();
    snapshots.written(&w);
    same_as_reload("first create").await;
    // Partly known already, with new apps and therefore new tags.
    let w = store.create(&[sp("a", "b", 80), sp("d", "a", 82), sp("e", "f", 83)], Default::default()).await.unwrap();
    snapshots.written(&w);
    same_as_reload("overlapping create").await;
    let w = store.delete(&[sp("a", "c", 81), sp("x", "y", 1)]).await.unwrap();
    snapshots.written(&w);
    same_as_reload("delete").await;
    assert_eq!(snapshots.current().policies.len(), 3);

    // Another replica writes; then this one: the snapshot must not skip the other write.
    store.create(&[sp("other", "replica", 90)], Default::default()).await.unwrap();
    let w = store.create(&[sp("g", "h", 91)], Default::default()).await.unwrap();
    snapshots.written(&w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshots.current().policies.len() != 5 {
        assert!(Instant::now() < deadline, "the loader did not read the other replica's write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    same_as_reload("after another replica's write").await;
    loader.abort();
}

/// Replica B follows replica A's writes by reading only what they changed, and ends with
/// exactly what reading every policy gives (order and tags included), over a long run of
/// creates and deletes: re-creates, deletes of absent policies, tags freed and given to
/// other apps. A write that did not record its change (an older server) and a replica
/// that fell behind the kept deletions make B read everything once; nothing is missed.
pub async fn another_replicas_writes_are_followed_from_the_change_log(backend: Backend) {
    use policy_api::policy::{Policy as StoredPolicy, Protocol as StoredProtocol};
    use policy_api::snapshot::{PolicyRead, Snapshots};
    use policy_api::store::{KEEP_VERSIONS, Store, StoreOptions};
    use sea_orm::ConnectionTrait;

    let db = crate::harness::TestDb::create(backend).await;
    let options = StoreOptions { tag_length: 1, ..StoreOptions::default() };
    let (a, b) = (Store::connect(&db.url, &options).await.unwrap(), Store::connect(&db.url, &options).await.unwrap());
    // B's loader only runs when asked.
    let (snapshots, loader) = Snapshots::start(b.clone(), Duration::from_secs(3600)).await.unwrap();
    let same_as_reading_all = |what: String| snapshot_matches_store(&snapshots, &b, what);
    let sp = |s: u64, d: u64, port: u64| {
        StoredPolicy::new(&format!("app-{s}"), &format!("app-{d}"), StoredProtocol::Tcp, port as u16, port as u16)
    };
    // A fixed pseudo-random run (xorshift), so a failure repeats.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for round in 0..40 {
        // One to three writes by A between B's looks.
        for _ in 0..=next(3) {
            let policies: Vec<StoredPolicy> = (0..=next(4)).map(|_| sp(next(12), next(12), 1 + next(3))).collect();
            if next(3) == 0 {
                a.delete(&policies).await.unwrap();
            } else {
                a.create(&policies, Default::default()).await.unwrap();
            }
        }
        assert_eq!(snapshots.refresh(&b).await.unwrap(), PolicyRead::Changes, "round {round}");
        same_as_reading_all(format!("round {round}")).await;
    }
    assert_eq!(snapshots.refresh(&b).await.unwrap(), PolicyRead::Unchanged);

    // A write that moved the version without recording its change.
    let unlogged = "UPDATE policies_info SET version = version + 1 WHERE id = 1";
    b.connection().execute_unprepared(unlogged).await.unwrap();
    a.create(&[sp(1, 2, 9)], Default::default()).await.unwrap();
    assert_eq!(snapshots.refresh(&b).await.unwrap(), PolicyRead::All, "an unlogged write: read everything");
    same_as_reading_all("after an unlogged write".into()).await;
    a.delete(&[sp(1, 2, 9)]).await.unwrap();
    assert_eq!(snapshots.refresh(&b).await.unwrap(), PolicyRead::Changes, "then the log again");
    same_as_reading_all("after the log resumed".into()).await;

    // Far behind: deletions older than the kept versions are pruned by the next delete, and
    // a replica that far behind reads everything.
    let count = || async {
        let row = b
            .connection()
            .query_one_raw(sea_orm::Statement::from_string(b.backend(), "SELECT COUNT(*) AS n FROM policy_deletions"));
        row.await.unwrap().unwrap().try_get_by_index::<i64>(0).unwrap()
    };
    assert!(count().await > 0, "deletions are kept");
    let jump = format!(
        "UPDATE policies_info SET version = version + {KEEP_VERSIONS}, logged_writes = logged_writes + {KEEP_VERSIONS} WHERE id = 1"
    );
    b.connection().execute_unprepared(&jump).await.unwrap();
    a.create(&[sp(3, 4, 9)], Default::default()).await.unwrap();
    a.delete(&[sp(3, 4, 9)]).await.unwrap();
    assert_eq!(count().await, 1, "only the last delete's row is left");
    assert_eq!(snapshots.refresh(&b).await.unwrap(), PolicyRead::All, "too far behind for the log");
    same_as_reading_all("after falling behind".into()).await;
    loader.abort();
}

/// By default a cell's certificate must name its underlay IP, and the cell may act only for
/// itself: another cell's lease cannot be acquired, renewed or released, and registrations
/// go only to the caller's cell and its own subnet. Nothing of the other cell changes.
pub async fn cells_act_only_for_themselves(backend: Backend) {
    let h = Harness::start_internal(backend, |c| {
        c.internal.cell_identity = policy_api::cell_identity::CellIdentity::UnderlayIpSan;
    })
    .await;
    let (me, other, nameless) = (h.cell_for(&["10.0.0.1"]), h.cell_for(&["10.0.0.2"]), h.cell());
    let acquire = |ip: &str| AcquireRequest { underlay_ip: ip.into(), single_overlay_ip: None };
    let mine = me.acquire_lease(&acquire("10.0.0.1")).await.unwrap().into_inner();
    let theirs = other.acquire_lease(&acquire("10.0.0.2")).await.unwrap().into_inner();
    me.renew_lease(&mine).await.unwrap();

    let refused = |r: Result<_, policy_client::Error<types::Error>>, who: &str| {
        let err = r.expect_err("refused");
        assert_eq!(error_status(&err), Some(403), "{who}");
        assert_eq!(error_message(&err), Some("the client certificate does not name the cell 10.0.0.2"), "{who}");
    };
    refused(me.acquire_lease(&acquire("10.0.0.2")).await.map(|_| ()), "acquire for another cell");
    refused(me.renew_lease(&theirs).await.map(|_| ()), "renew another cell's lease");
    let release = types::ReleaseRequest { underlay_ip: "10.0.0.2".into() };
    refused(me.release_lease(&release).await.map(|_| ()), "release another cell's lease");
    refused(nameless.release_lease(&release).await.map(|_| ()), "a certificate naming no address");
    assert!(cell_leases(&other).await.contains(&theirs), "the other cell's lease is intact");

    let reg = |ip: &str| CellRegistrations {
        ttl_seconds: 60,
        registrations: vec![Registration { hostname: "app.apps.internal".into(), ip: ip.into() }],
    };
    let (base, _) = mine.overlay_subnet.split_once('/').unwrap();
    let own_ip = format!("{}.7", base.rsplit_once('.').unwrap().0);
    me.register_cell("10.0.0.1", &reg(&own_ip)).await.unwrap();
    refused(me.register_cell("10.0.0.2", &reg(&own_ip)).await.map(|_| ()), "register for another cell");
    let err = me.register_cell("10.0.0.1", &reg("10.255.250.250")).await.unwrap_err();
    assert_eq!(error_status(&err), Some(400), "an address outside the cell's subnet");
    // The table is served from the snapshot, which follows the write at once but not
    // synchronously.
    eventually("the cell's own registration, and only it", || async {
        let sdc = me.get_registration("app.apps.internal").await.unwrap().into_inner();
        sdc.hosts.iter().map(|h| h.ip_address.clone()).collect::<Vec<_>>() == vec![own_ip.clone()]
    })
    .await;
}

async fn cell_leases(cell: &policy_client::Client) -> Vec<Lease> {
    cell.list_leases().await.unwrap().into_inner().leases
}

/// The gauge of watches waiting right now, from this process's recorder.
pub fn watches_waiting() -> u64 {
    let text = policy_api::server::prometheus().render();
    text.lines()
        .find_map(|l| l.strip_prefix("c2c_watches_waiting "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// On shutdown the server stops accepting at once and answers every open watch, instead of
/// holding them for their full wait (upstream waits up to a minute).
pub async fn shutdown_answers_every_watch() {
    const WATCHES: usize = 1000;
    let h = Harness::start_internal(Backend::Sqlite, |c| c.internal.max_watch_secs = 120).await;
    let url = format!("{}/networking/v1/internal/policies?id=app-1&wait=120s", h.internal_url());
    let etag = h.cell_http(None, true).get(url.replace("&wait=120s", "")).send().await.unwrap().headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    // Ten cells' connections (HTTP/2), a hundred watches on each.
    let mut watches = Vec::new();
    for _ in 0..10 {
        let http = h.cell_http(None, true);
        for _ in 0..WATCHES / 10 {
            let (http, url, etag) = (http.clone(), url.clone(), etag.clone());
            watches.push(tokio::spawn(async move {
                http.get(&url).header("If-None-Match", etag).send().await.map(|r| r.status().as_u16())
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while watches_waiting() < WATCHES as u64 {
        assert!(Instant::now() < deadline, "only {} of {WATCHES} watches are waiting", watches_waiting());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let internal = h.server.internal_addr.unwrap();
    let Harness { server, pki: _pki, cf: _cf, db: _db, .. } = h;
    let started = Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    let mut answered = 0;
    for w in watches {
        match w.await.unwrap() {
            Ok(304) => answered += 1,
            other => panic!("a watch was cut instead of answered: {other:?}"),
        }
    }
    assert_eq!(answered, WATCHES);
    assert!(tokio::net::TcpStream::connect(internal).await.is_err(), "the listener is closed");
    println!("shutdown with {WATCHES} open watches took {took:?}");
}

/// A counter from this process's recorder.
fn counter(name: &str) -> u64 {
    let text = policy_api::server::prometheus().render();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// With a hundred cells watching, each for its own app, a policy between two of the apps
/// wakes those two watches and no other; the rest keep waiting until their wait runs out.
/// Written through this replica, or through another one (read back by the loader).
pub async fn a_change_wakes_only_the_watches_it_concerns(through_another_replica: bool) {
    const CELLS: usize = 100;
    let h = Harness::start_internal(Backend::Sqlite, |_| {}).await;
    let other = if through_another_replica {
        let mut config = h.config.clone();
        config.internal.listen = "127.0.0.1:0".parse().unwrap();
        Some(policy_api::Server::start(&config).await.unwrap())
    } else {
        None
    };
    let http = h.cell_http(None, true);
    let url = |i: usize| format!("{}/networking/v1/internal/policies?id=watched-{i}", h.internal_url());
    let mut watches = Vec::new();
    for i in 0..CELLS {
        let etag = http.get(url(i)).send().await.unwrap().headers()["etag"].to_str().unwrap().to_string();
        let (http, url) = (http.clone(), format!("{}&wait=20s", url(i)));
        watches.push(tokio::spawn(async move {
            let r = http.get(&url).header("If-None-Match", etag).send().await.unwrap();
            (r.status().as_u16(), Instant::now())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while watches_waiting() < CELLS as u64 {
        assert!(Instant::now() < deadline, "only {} of {CELLS} watches are waiting", watches_waiting());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = counter("c2c_watch_wakeups_total");
    let created = Instant::now();
    let admin = match &other {
        Some(other) => policy_client::Client::new_with_token(&other.url(), &h.cf.uaa.user_token("admin")).unwrap(),
        None => h.admin(),
    };
    admin
        .create_policies(&Policies { policies: vec![Policy::new("watched-3", "watched-7", Protocol::Tcp, 80, 80)] })
        .await
        .unwrap();
    let seven = watches.remove(7);
    let three = watches.remove(3);
    for w in [three, seven] {
        let (status, at) = w.await.unwrap();
        assert_eq!(status, 200, "the concerned watches answer with the change");
        assert!(at.duration_since(created) < Duration::from_secs(5));
    }
    assert_eq!(counter("c2c_watch_wakeups_total") - before, 2, "two watches woken, not {CELLS}");
    assert_eq!(watches_waiting(), CELLS as u64 - 2, "the others still wait");
    for w in watches {
        w.abort();
    }
    if let Some(other) = other {
        other.shutdown().await;
    }
}
