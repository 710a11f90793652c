//! The external API, end to end through the generated client, run against every backend.

use std::collections::HashSet;

use policy_client::types::{self, Policies, PoliciesV0, Policy, PolicyV0, Protocol};
use policy_client::{ClientInfo, error_message, error_status};

use crate::harness::{Backend, Harness};
use testkit::{APP_1, APP_2, APP_3};

fn p(src: &str, dst: &str, proto: Protocol, start: i32, end: i32) -> Policy {
    Policy::new(src, dst, proto, start, end)
}

fn body(policies: Vec<Policy>) -> Policies {
    Policies { policies }
}

async fn all(client: &policy_client::Client) -> Vec<(String, String, String, i32, i32)> {
    let list = client.list_policies(None, None, None).await.unwrap().into_inner();
    assert_eq!(list.total_policies as usize, list.policies.len());
    list.policies
        .into_iter()
        .map(|p| {
            (
                p.source.id,
                p.destination.id,
                p.destination.protocol.to_string(),
                p.destination.ports.start,
                p.destination.ports.end,
            )
        })
        .collect()
}

pub async fn create_list_and_idempotence(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    let req = body(vec![p(APP_1, APP_2, Protocol::Tcp, 8080, 8090), p(APP_3, APP_3, Protocol::Udp, 53, 53)]);
    admin.create_policies(&req).await.unwrap();
    admin.create_policies(&req).await.unwrap();
    let got = all(&admin).await;
    assert_eq!(
        got,
        vec![
            (APP_1.into(), APP_2.into(), "tcp".into(), 8080, 8090),
            (APP_3.into(), APP_3.into(), "udp".into(), 53, 53)
        ],
        "listed in creation order, no duplicates"
    );
    // v0 hides port ranges and counts only what it shows.
    let v0 = admin.list_policies_v0(None, None, None).await.unwrap().into_inner();
    assert_eq!(v0.total_policies, 1);
    assert_eq!(v0.policies[0].destination.port, 53);
    // Tags never appear on the external API.
    let (status, text, headers) = h.raw(&admin, "GET", "/networking/v1/external/policies", vec![]).await;
    assert_eq!(status, 200);
    assert!(!text.contains("tag"), "{text}");
    assert_eq!(headers["content-type"], "application/json");
}

pub async fn v0_create_and_delete_match_v1(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    let v0 = PoliciesV0 {
        policies: vec![PolicyV0 {
            source: types::Source { id: APP_1.into(), tag: None },
            destination: types::DestinationV0 { id: APP_2.into(), tag: None, protocol: Protocol::Tcp, port: 1234 },
        }],
    };
    admin.create_policies_v0(&v0).await.unwrap();
    assert_eq!(all(&admin).await, vec![(APP_1.into(), APP_2.into(), "tcp".into(), 1234, 1234)]);
    admin.delete_policies_v0(&v0).await.unwrap();
    assert!(all(&admin).await.is_empty());
}

pub async fn filters(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    admin
        .create_policies(&body(vec![
            p(APP_1, APP_2, Protocol::Tcp, 1, 1),
            p(APP_2, APP_3, Protocol::Tcp, 2, 2),
            p(APP_3, APP_1, Protocol::Tcp, 3, 3),
        ]))
        .await
        .unwrap();
    let ports = |l: types::PolicyList| l.policies.iter().map(|p| p.destination.ports.start).collect::<Vec<_>>();
    assert_eq!(ports(admin.list_policies(None, Some(APP_1), None).await.unwrap().into_inner()), vec![1, 3]);
    assert_eq!(
        ports(admin.list_policies(None, None, Some(&format!("{APP_1},{APP_2}"))).await.unwrap().into_inner()),
        vec![1, 2]
    );
    assert_eq!(ports(admin.list_policies(Some(APP_1), None, None).await.unwrap().into_inner()), vec![3]);
    assert_eq!(ports(admin.list_policies(Some(APP_3), None, Some(APP_2)).await.unwrap().into_inner()), vec![2]);
    // `id` wins over the others; an empty value matches nothing.
    assert_eq!(ports(admin.list_policies(Some(APP_3), Some(APP_2), None).await.unwrap().into_inner()), vec![1, 2]);
    assert_eq!(ports(admin.list_policies(None, Some(""), None).await.unwrap().into_inner()), Vec::<i32>::new());
}

pub async fn delete_and_tag_reuse(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    admin
        .create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1), p(APP_3, APP_1, Protocol::Tcp, 2, 2)]))
        .await
        .unwrap();
    let tags = admin.list_tags().await.unwrap().into_inner().tags;
    let pairs: Vec<(String, String, String)> = tags.into_iter().map(|t| (t.id, t.tag, t.type_)).collect();
    assert_eq!(
        pairs,
        vec![
            (APP_1.into(), "01".into(), "app".into()),
            (APP_2.into(), "02".into(), "app".into()),
            (APP_3.into(), "03".into(), "app".into())
        ]
    );
    // Deleting what does not exist is fine and changes nothing.
    admin.delete_policies(&body(vec![p(APP_1, APP_2, Protocol::Udp, 1, 1)])).await.unwrap();
    admin.delete_policies(&body(vec![p("nope", APP_2, Protocol::Tcp, 1, 1)])).await.unwrap();
    assert_eq!(all(&admin).await.len(), 2);
    // app-2 is in no policy any more: its tag is freed and the next new app gets it.
    admin.delete_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)])).await.unwrap();
    let ids: Vec<String> = admin.list_tags().await.unwrap().into_inner().tags.into_iter().map(|t| t.tag).collect();
    assert_eq!(ids, vec!["01", "03"]);
    h.cf.cc.add_app("app-9", "app-9", "space-1");
    admin.create_policies(&body(vec![p("app-9", "app-9", Protocol::Tcp, 5, 5)])).await.unwrap();
    let tags = admin.list_tags_v0().await.unwrap().into_inner().tags;
    assert!(tags.iter().any(|t| t.id == "app-9" && t.tag == "02"), "{tags:?}");
}

pub async fn validation_errors_change_nothing(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    admin.create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)])).await.unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("/networking/v1/external/policies", "", "mapper: unmarshal json: unexpected end of JSON input"),
        ("/networking/v1/external/policies", "{", "mapper: unmarshal json: unexpected end of JSON input"),
        ("/networking/v1/external/policies", r#"{"policies":[]}"#, "mapper: validate policies: missing policies"),
        (
            "/networking/v1/external/policies",
            r#"{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"tcp","port":8080}}]}"#,
            "mapper: validate policies: missing start port",
        ),
        (
            "/networking/v0/external/policies",
            r#"{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#,
            "mapper: validate policies: missing port",
        ),
        (
            "/networking/v1/external/policies",
            r#"{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"icmp","ports":{"start":1,"end":1}}}]}"#,
            "mapper: validate policies: invalid destination protocol, specify either udp or tcp",
        ),
        (
            "/networking/v1/external/policies",
            r#"{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"tcp","ports":{"start":"1","end":1}}}]}"#,
            "mapper: unmarshal json: json: cannot unmarshal string into Go struct field Ports.policies.destination.ports.start of type int",
        ),
        (
            "/networking/v1/external/policies/delete",
            r#"{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"tcp","ports":{"start":5,"end":1}}}]}"#,
            "mapper: validate policies: invalid port range 5-1, start must be less than or equal to end",
        ),
        (
            "/networking/v1/external/policies",
            r#"{"policies":[{"source":{"id":"app-3"},"destination":{"id":"app-2","protocol":"tcp","ports":{"start":1,"end":1}}},{"source":{"id":"app-1","tag":"01"},"destination":{"id":"app-2","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#,
            "mapper: validate policies: tags may not be specified",
        ),
    ];
    for (path, text, message) in cases {
        let (status, got, headers) = h.raw(&admin, "POST", path, text.as_bytes().to_vec()).await;
        assert_eq!(status, 400, "{path} {text}");
        let parsed: serde_json::Value = serde_json::from_str(&got).expect("error bodies are valid JSON");
        assert_eq!(parsed["error"], *message, "{path} {text}");
        assert!(got.starts_with("{\"error\": "), "upstream spacing: {got}");
        assert_eq!(headers["content-type"], "application/json");
    }
    assert_eq!(all(&admin).await, vec![(APP_1.into(), APP_2.into(), "tcp".into(), 1, 1)]);
    let tags = admin.list_tags().await.unwrap().into_inner().tags;
    assert_eq!(tags.len(), 2, "no tag was allocated by a refused request");
}

pub async fn oversized_bodies(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    let big = vec![b' '; 11 << 20];
    let (status, text, _) = h.raw(&admin, "POST", "/networking/v1/external/policies", big.clone()).await;
    assert_eq!((status, text.as_str()), (400, r#"{"error": "failed reading request body"}"#));
    let (status, text, _) = h.raw(&admin, "POST", "/networking/v1/external/policies/delete", big).await;
    assert_eq!((status, text.as_str()), (400, r#"{"error": "invalid request body"}"#));
}

pub async fn sql_metacharacters_are_data(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    let nasty = ["x';DROP/**/TABLE/**/policies;--", "a\"b", "c\\d", "%_*", "é✓"];
    let policies: Vec<Policy> = nasty.iter().map(|n| p(n, n, Protocol::Tcp, 1, 1)).collect();
    admin.create_policies(&body(policies)).await.unwrap();
    let got = all(&admin).await;
    let ids: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(ids, nasty.to_vec());
    let filtered = admin.list_policies(Some("x';DROP/**/TABLE/**/policies;--"), None, None).await.unwrap().into_inner();
    assert_eq!(filtered.total_policies, 1);
    admin.delete_policies(&body(nasty.iter().map(|n| p(n, n, Protocol::Tcp, 1, 1)).collect())).await.unwrap();
    assert!(all(&admin).await.is_empty());
}

pub async fn authentication_failures(backend: Backend) {
    let h = Harness::start(backend).await;
    let uaa = &h.cf.uaa;
    let before = h.admin().list_tags().await.unwrap().into_inner().tags.len();
    let req = body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)]);

    // Missing header.
    let anonymous = policy_client::Client::new(&h.url());
    let err = anonymous.create_policies(&req).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(401), Some("missing authorization header")));
    let (_, _, headers) = h.raw(&anonymous, "GET", "/networking/v1/external/policies", vec![]).await;
    assert_eq!(headers["www-authenticate"], "Bearer");

    let expired =
        uaa.user_token_with("admin", testkit::TokenRequest { lifetime_secs: Some(-3600), ..Default::default() });
    let wrong_issuer = uaa.user_token_with(
        "admin",
        testkit::TokenRequest { issuer: Some("https://evil.example/oauth/token".into()), ..Default::default() },
    );
    let unknown_kid =
        uaa.user_token_with("admin", testkit::TokenRequest { kid: Some("nope".into()), ..Default::default() });
    for (what, token) in [
        ("garbage", "not-a-jwt".to_string()),
        ("forged", uaa.forged_user_token("admin")),
        ("expired", expired),
        ("alg none", uaa.unsigned_user_token("admin")),
        ("wrong issuer", wrong_issuer),
        ("unknown kid", unknown_kid),
    ] {
        let client = h.with_token(&token);
        let err = client.create_policies(&req).await.unwrap_err();
        assert_eq!(error_status(&err), Some(401), "{what}");
        assert_eq!(error_message(&err), Some("failed to verify token with uaa"), "{what}");
        let err = client.list_tags().await.unwrap_err();
        assert_eq!(error_status(&err), Some(401), "{what}");
    }
    assert_eq!(h.admin().list_tags().await.unwrap().into_inner().tags.len(), before, "nothing changed");

    // 406 comes before authentication.
    let (status, text, _) = h.raw(&anonymous, "GET", "/networking/v2/external/policies", vec![]).await;
    assert_eq!((status, text.as_str()), (406, r#"{"error": "api version 'v2' not supported"}"#));
}

pub async fn scopes_and_spaces(backend: Backend) {
    let h = Harness::start(backend).await;
    let req = |s: &str, d: &str| body(vec![p(s, d, Protocol::Tcp, 8080, 8080)]);

    let bob = h.client("bob");
    let err = bob.create_policies(&req(APP_1, APP_2)).await.unwrap_err();
    assert_eq!(error_status(&err), Some(403));
    assert_eq!(
        error_message(&err),
        Some(
            "provided scopes [openid cloud_controller.read] do not include allowed scopes [network.admin network.write]"
        )
    );
    let alice = h.client("alice");
    let err = alice.list_tags().await.unwrap_err();
    assert_eq!(
        error_message(&err),
        Some(
            "provided scopes [openid cloud_controller.read network.write] do not include allowed scopes [network.admin]"
        )
    );
    assert_eq!(error_status(&alice.whoami().await.unwrap_err()), Some(403));

    // alice develops in space-1 (app-1, app-2) but not space-2 (app-3).
    alice.create_policies(&req(APP_1, APP_2)).await.unwrap();
    for (s, d) in [(APP_1, APP_3), (APP_3, APP_1), (APP_1, GHOST)] {
        let err = alice.create_policies(&req(s, d)).await.unwrap_err();
        assert_eq!(error_status(&err), Some(403), "{s}->{d}");
        assert_eq!(error_message(&err), Some("one or more applications cannot be found or accessed"));
        let err = alice.delete_policies(&req(s, d)).await.unwrap_err();
        assert_eq!(error_status(&err), Some(403), "{s}->{d}");
    }
    // The admin adds one alice may not see; her listing hides it.
    h.admin().create_policies(&req(APP_3, APP_1)).await.unwrap();
    let mine = alice.list_policies(None, None, None).await.unwrap().into_inner();
    assert_eq!(mine.total_policies, 1);
    assert_eq!(mine.policies[0].destination.id, APP_2);
    let carol = h.client("carol");
    assert_eq!(carol.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 2);
    alice.delete_policies(&req(APP_1, APP_2)).await.unwrap();
    assert_eq!(all(&h.admin()).await.len(), 1);

    // Cloud Controller down: a clear 500, not a pass.
    h.cf.cc.set_failing(true);
    let err = alice.create_policies(&req(APP_1, APP_2)).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(500), Some("check access failed")));
    let err = alice.list_policies(None, None, None).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(500), Some("filter policies failed")));
    h.cf.cc.set_failing(false);
}

pub async fn self_service(backend: Backend) {
    let h = Harness::start_with(backend, |c| c.enable_space_developer_self_service = true).await;
    let bob = h.client("bob");
    bob.create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)])).await.unwrap();
    let err = bob.create_policies(&body(vec![p(APP_1, APP_3, Protocol::Tcp, 1, 1)])).await.unwrap_err();
    assert_eq!(error_status(&err), Some(403));
    assert_eq!(bob.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 1);
}

/// Listings come from memory, yet a write through one replica is seen by a read through
/// another at once: each read first checks the database's version row.
pub async fn reads_follow_writes_across_replicas(backend: Backend) {
    // Replica B's own poll would take a minute: only the read-time check can catch it up.
    let h = Harness::start_with(backend, |c| c.internal.snapshot_poll_interval_ms = 60_000).await;
    let b = policy_api::Server::start(&h.config).await.unwrap();
    let (admin_a, admin_b) =
        (h.admin(), policy_client::Client::new_with_token(&b.url(), &h.cf.uaa.user_token("admin")).unwrap());
    let alice_b = policy_client::Client::new_with_token(&b.url(), &h.cf.uaa.user_token("alice")).unwrap();
    for port in 1..=10 {
        let one = body(vec![p(APP_1, APP_2, Protocol::Tcp, port, port)]);
        admin_a.create_policies(&one).await.unwrap();
        assert_eq!(all(&admin_b).await.len(), 1, "B sees A's create at once");
        let filtered = admin_b.list_policies(Some(APP_2), None, None).await.unwrap().into_inner();
        assert_eq!(filtered.policies[0].destination.ports.start, port);
        assert_eq!(alice_b.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 1);
        admin_a.delete_policies(&one).await.unwrap();
        assert!(all(&admin_b).await.is_empty(), "B sees A's delete at once");
    }
    b.shutdown().await;
}

/// A non-admin listing costs Cloud Controller the same few calls whatever the size of the
/// table, and a non-admin request may name only `max_apps_per_request` apps.
pub async fn cloud_controller_fan_out_is_bounded(backend: Backend) {
    let h = Harness::start_with(backend, |c| c.max_apps_per_request = 50).await;
    let (admin, alice) = (h.admin(), h.client("alice"));
    alice.create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)])).await.unwrap();
    let mut calls = Vec::new();
    // 100 apps (the test pool has 255 tags), up to 2,500 distinct pairs.
    for range in [0..100, 100..2_100] {
        let table: Vec<Policy> = range
            .map(|i| p(&format!("other-{}", i % 50), &format!("other-{}", 50 + (i / 50) % 50), Protocol::Tcp, 2, 2))
            .collect();
        for chunk in table.chunks(1_000) {
            admin.create_policies(&body(chunk.to_vec())).await.unwrap();
        }
        let before = h.cf.cc.requests();
        assert_eq!(alice.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 1);
        calls.push(h.cf.cc.requests() - before);
    }
    assert_eq!(calls[0], calls[1], "Cloud Controller calls per listing: {calls:?}");
    assert!(calls[0] <= 2, "her roles and the apps of her spaces: {calls:?}");

    let many: Vec<Policy> =
        (0..50).map(|i| p(APP_1, &format!("b0000000-0000-4000-8000-{i:012x}"), Protocol::Tcp, 1, 1)).collect();
    let before = h.cf.cc.requests();
    let err = alice.create_policies(&body(many)).await.unwrap_err();
    assert_eq!(error_status(&err), Some(400));
    assert_eq!(
        error_message(&err),
        Some("too many applications in one request: 51; at most 50 (max_apps_per_request)")
    );
    assert_eq!(h.cf.cc.requests(), before, "refused before any lookup");
}

/// A GUID-shaped id Cloud Controller does not know.
const GHOST: &str = "a0000000-0000-4000-8000-0000000000ff";

/// Issue: a developer named `"<own app guid>,x1"` and got a tag for the literal id. Every id
/// must be one of the caller's apps, checked by membership; ids that would split in a query
/// are refused for everyone.
pub async fn ids_must_be_the_callers_apps(backend: Backend) {
    let h = Harness::start(backend).await;
    let (admin, alice) = (h.admin(), h.client("alice"));
    let tags_before = admin.list_tags().await.unwrap().into_inner().tags.len();
    let req = |s: &str, d: &str| body(vec![p(s, d, Protocol::Tcp, 8080, 8080)]);
    let split =
        "mapper: validate policies: invalid destination id: must not contain commas, whitespace or control characters";
    for id in [
        format!("{APP_1},x1"),
        format!("{APP_1},"),
        format!("{APP_1} "),
        format!("{APP_1}\tx"),
        format!("{APP_1}\n"),
        format!("{APP_1}\u{0}"),
        format!("\u{a0}{APP_1}"),
    ] {
        for client in [&alice, &admin] {
            let err = client.create_policies(&req(APP_2, &id)).await.unwrap_err();
            assert_eq!((error_status(&err), error_message(&err)), (Some(400), Some(split)), "{id:?}");
        }
    }
    let err = admin.create_policies(&req(APP_2, &"a".repeat(256))).await.unwrap_err();
    assert_eq!(error_status(&err), Some(400));
    // Non-admins name Cloud Controller apps, whose guids are lowercase UUIDs.
    for id in [APP_1.to_uppercase(), format!("{}A", &APP_1[..35]), "app-1".into(), format!("{APP_1}-x")] {
        let err = alice.create_policies(&req(APP_2, &id)).await.unwrap_err();
        assert_eq!(
            (error_status(&err), error_message(&err)),
            (Some(400), Some("mapper: validate policies: invalid destination id: not a Cloud Controller app guid")),
            "{id:?}"
        );
        let err = alice.delete_policies(&req(&id, APP_2)).await.unwrap_err();
        assert_eq!(error_status(&err), Some(400), "{id:?}");
    }
    // Membership, not a count: a Cloud Controller answer that names other apps than those
    // asked for vouches for nothing.
    h.cf.cc.set_ignore_guid_filter(true);
    let err = alice.create_policies(&req(APP_1, GHOST)).await.unwrap_err();
    assert_eq!(error_status(&err), Some(403));
    let err = alice.create_policies(&req(GHOST, APP_2)).await.unwrap_err();
    assert_eq!(error_status(&err), Some(403));
    h.cf.cc.set_ignore_guid_filter(false);
    assert_eq!(admin.list_tags().await.unwrap().into_inner().tags.len(), tags_before, "no tag was allocated");
    assert!(all(&admin).await.is_empty());
    // Her own apps still work, and admins keep free-form ids.
    alice.create_policies(&req(APP_1, APP_2)).await.unwrap();
    admin.create_policies(&req("outside-cf.worker", "app-1")).await.unwrap();
    assert_eq!(all(&admin).await.len(), 2);
}

/// A non-admin may give only `max_new_apps_per_caller_per_hour` apps a new tag.
pub async fn new_tags_per_caller_are_budgeted(backend: Backend) {
    let h = Harness::start_with(backend, |c| c.max_new_apps_per_caller_per_hour = 2).await;
    let extra = "a0000000-0000-4000-8000-000000000004";
    h.cf.cc.add_app(extra, "app-4", "space-1");
    let (admin, alice, carol) = (h.admin(), h.client("alice"), h.client("carol"));
    let req = |s: &str, d: &str| body(vec![p(s, d, Protocol::Tcp, 1, 1)]);
    alice.create_policies(&req(APP_1, APP_2)).await.unwrap();
    // Existing tags cost nothing.
    alice.create_policies(&req(APP_2, APP_1)).await.unwrap();
    let err = alice.create_policies(&req(APP_1, extra)).await.unwrap_err();
    assert_eq!(error_status(&err), Some(429));
    assert!(error_message(&err).unwrap().contains("may tag only 0 more this hour"), "{err:?}");
    assert_eq!(all(&admin).await.len(), 2, "nothing of the refused request was written");
    // Other callers have their own budget; admins have none.
    carol.create_policies(&req(APP_1, extra)).await.unwrap();
    admin.create_policies(&req("x", "y")).await.unwrap();
    assert_eq!(all(&admin).await.len(), 4);
}

/// The per-app quota is checked inside the write transaction: concurrent creates through
/// two replicas, by two developers, never leave more than the limit.
pub async fn quota_holds_under_concurrency(backend: Backend) {
    const LIMIT: usize = 5;
    let h = Harness::start_with(backend, |c| c.max_policies_per_app_source = LIMIT as u64).await;
    let second = policy_api::Server::start(&h.config).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20u16 {
        let (url, user) = if i % 2 == 0 { (h.url(), "alice") } else { (second.url(), "carol") };
        let token = h.cf.uaa.user_token(user);
        tasks.push(tokio::spawn(async move {
            let client = policy_client::Client::new_with_token(&url, &token).unwrap();
            let port = i32::from(1000 + i);
            match client.create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, port, port)])).await {
                Ok(_) => true,
                Err(e) => {
                    assert_eq!(error_message(&e), Some("policy quota exceeded"), "{e:?}");
                    false
                }
            }
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    let stored = all(&h.admin()).await.len();
    assert_eq!(stored, created);
    assert_eq!(stored, LIMIT, "exactly the limit is reached, never more");
    second.shutdown().await;
}

pub async fn quota(backend: Backend) {
    let h = Harness::start_with(backend, |c| c.max_policies_per_app_source = 2).await;
    let alice = h.client("alice");
    let one = |port| body(vec![p(APP_1, APP_2, Protocol::Tcp, port, port)]);
    alice.create_policies(&one(1)).await.unwrap();
    alice.create_policies(&one(2)).await.unwrap();
    let err = alice.create_policies(&one(3)).await.unwrap_err();
    assert_eq!((error_status(&err), error_message(&err)), (Some(403), Some("policy quota exceeded")));
    alice.delete_policies(&one(1)).await.unwrap();
    alice.create_policies(&one(3)).await.unwrap();
    // Admins are exempt.
    h.admin().create_policies(&one(4)).await.unwrap();
    assert_eq!(all(&h.admin()).await.len(), 3);
}

pub async fn cleanup(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    admin
        .create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 3333, 3333), p(APP_1, APP_3, Protocol::Tcp, 1, 9)]))
        .await
        .unwrap();
    assert_eq!(admin.cleanup_policies(None, None).await.unwrap().into_inner().total_policies, 0);
    h.cf.cc.delete_app(APP_2);
    let stale = admin.cleanup_policies_v0(None, None).await.unwrap().into_inner();
    assert_eq!(stale.total_policies, 1);
    assert_eq!(stale.policies[0].destination.id, APP_2);
    assert_eq!(stale.policies[0].destination.ports.start, 3333, "v1 shape under /v0/ too");
    assert_eq!(all(&admin).await.len(), 1);
    let tags: Vec<String> = admin.list_tags().await.unwrap().into_inner().tags.into_iter().map(|t| t.id).collect();
    assert!(!tags.contains(&APP_2.to_string()), "stale app's tag freed");
    let err = h.client("alice").cleanup_policies(None, None).await.unwrap_err();
    assert_eq!(error_status(&err), Some(403));
}

/// Cloud Controller answers 200 with no apps: the cleanup refuses to wipe the foundation,
/// says why, and raises an alert metric; a dry run reports; an admin can force it.
pub async fn cleanup_cannot_wipe_the_foundation(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin();
    let policies: Vec<Policy> = (1..=20).map(|port| p(APP_1, APP_2, Protocol::Tcp, port, port)).collect();
    admin.create_policies(&body(policies)).await.unwrap();
    h.cf.cc.delete_app(APP_1);
    h.cf.cc.delete_app(APP_2);
    h.cf.cc.delete_app(APP_3);
    let err = admin.cleanup_policies(None, None).await.unwrap_err();
    assert_eq!(error_status(&err), Some(409));
    assert!(error_message(&err).unwrap().contains("it would delete 20 of 20 policies"), "{err:?}");
    assert_eq!(all(&admin).await.len(), 20, "nothing deleted");
    assert_eq!(gauge(&h, "c2c_cleanup_refused").await, Some(1.0));
    let dry = admin.cleanup_policies(Some(true), Some(true)).await.unwrap().into_inner();
    assert_eq!(dry.total_policies, 20);
    assert_eq!(all(&admin).await.len(), 20, "a dry run deletes nothing");
    assert_eq!(admin.cleanup_policies(None, Some(true)).await.unwrap().into_inner().total_policies, 20);
    assert!(all(&admin).await.is_empty());
    assert_eq!(gauge(&h, "c2c_cleanup_refused").await, Some(0.0));

    // A server whose UAA client cannot read every app refuses to clean up at all.
    h.cf.uaa.add_client("network-policy-narrow", "secret", &["uaa.resource"]);
    let mut config = h.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.uaa.client_id = "network-policy-narrow".into();
    config.uaa.client_secret = policy_api::config::Secret("secret".into());
    let narrow = policy_api::Server::start(&config).await.unwrap();
    admin.create_policies(&body(vec![p("x", "y", Protocol::Tcp, 1, 1)])).await.unwrap();
    let client = policy_client::Client::new_with_token(&narrow.url(), &h.cf.uaa.user_token("admin")).unwrap();
    let err = client.cleanup_policies(None, Some(true)).await.unwrap_err();
    assert_eq!(error_status(&err), Some(409));
    assert!(error_message(&err).unwrap().contains("lacks cloud_controller.admin_read_only"), "{err:?}");
    assert_eq!(all(&admin).await.len(), 1);
    narrow.shutdown().await;
}

/// A gauge from the server's metrics listener.
async fn gauge(h: &Harness, name: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", h.server.metrics_addr.expect("metrics on"));
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
}

pub async fn info_headers_and_metrics(backend: Backend) {
    let h = Harness::start_with(backend, |c| c.allowed_cors_domains = vec!["https://ok.example".into()]).await;
    let admin = h.admin();
    assert_eq!(admin.whoami().await.unwrap().into_inner().subject, "admin");
    let client_token = h.cf.uaa.client_token(testkit::POLICY_SERVER_CLIENT);
    let _ = client_token; // a client without network.admin gets 403 on whoami:
    assert_eq!(
        error_status(&h.with_token(&h.cf.uaa.client_token(testkit::POLICY_SERVER_CLIENT)).whoami().await.unwrap_err()),
        Some(403)
    );
    admin.health().await.unwrap();

    let http = admin.client();
    let resp = http.get(format!("{}/", h.url())).send().await.unwrap();
    assert!(resp.text().await.unwrap().starts_with("Network policy server, up for "));
    let resp = http
        .get(format!("{}/networking/v1/external/policies", h.url()))
        .header("X-VCAP-Request-ID", "abc")
        .header("Origin", "https://ok.example")
        .send()
        .await
        .unwrap();
    let hd = resp.headers();
    assert!(hd["x-vcap-request-id"].to_str().unwrap().starts_with("abc::"));
    assert_eq!(hd["access-control-allow-origin"], "https://ok.example");
    assert_eq!(hd["x-frame-options"], "deny");
    assert_eq!(hd["x-content-type-options"], "nosniff");
    assert_eq!(hd["x-xss-protection"], "1; mode=block");
    assert_eq!(hd["content-security-policy"], "frame-ancestors 'none'");
    assert!(hd.get("strict-transport-security").is_none());

    let resp = http
        .request(reqwest::Method::OPTIONS, format!("{}/networking/v1/external/policies", h.url()))
        .header("Origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-methods"], "POST,GET,OPTIONS");
    assert_eq!(resp.headers()["access-control-allow-headers"], "authorization");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert!(resp.headers().get("x-vcap-request-id").is_none());

    let resp = http.get(format!("{}/nope", h.url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "404 page not found\n");
    let resp = http.put(format!("{}/networking/v1/external/policies", h.url())).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST, GET, OPTIONS");
    // No implicit HEAD on GET routes, as upstream.
    let resp = http.head(format!("{}/health", h.url())).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, OPTIONS");

    let metrics_url = format!("http://{}", h.server.metrics_addr.unwrap());
    let text = policy_client::Client::new(&metrics_url).metrics().await.unwrap();
    let bytes = text.into_inner().into_inner().collect::<Vec<_>>().await;
    let text: String = bytes.into_iter().map(|b| String::from_utf8_lossy(&b.unwrap()).into_owned()).collect();
    assert!(text.contains("c2c_http_requests_total"), "{text}");
    assert!(text.contains("route=\"PoliciesIndex\""), "{text}");
}

pub async fn check_token_mode(backend: Backend) {
    let h =
        Harness::start_with(backend, |c| c.uaa.verification = policy_api::config::TokenVerification::CheckToken).await;
    let calls = h.cf.uaa.check_token_calls();
    h.admin().create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)])).await.unwrap();
    assert!(h.cf.uaa.check_token_calls() > calls);
    let err = h.with_token(&h.cf.uaa.forged_user_token("admin")).list_tags().await.unwrap_err();
    assert_eq!(error_status(&err), Some(401));
}

pub async fn key_rotation(backend: Backend) {
    let h = Harness::start_with(backend, |c| c.uaa.key_refetch_min_interval_secs = 0).await;
    h.admin().list_tags().await.unwrap();
    let fetched = h.cf.uaa.token_keys_calls();
    h.admin().list_tags().await.unwrap();
    assert_eq!(h.cf.uaa.token_keys_calls(), fetched, "keys are cached by kid");
    h.cf.uaa.rotate_key("key-2");
    // A token signed with the new key (unknown kid) makes the server refetch the keys.
    h.admin().list_tags().await.unwrap();
    assert_eq!(h.cf.uaa.token_keys_calls(), fetched + 1);
}

/// A key withdrawn from UAA stops being accepted once the key cache expires.
pub async fn withdrawn_keys_stop_working(backend: Backend) {
    let h = Harness::start_with(backend, |c| {
        c.uaa.key_refetch_min_interval_secs = 0;
        c.uaa.key_cache_ttl_secs = 1;
    })
    .await;
    let old = h.cf.uaa.user_token("admin");
    h.with_token(&old).list_tags().await.unwrap();
    let one = body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)]);
    h.client("alice").create_policies(&one).await.unwrap();
    h.cf.uaa.rotate_key("key-2");
    // The server's own Cloud Controller token was signed with the withdrawn key: Cloud
    // Controller refuses it, and the server gets a new one at once.
    h.client("alice").delete_policies(&one).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h.with_token(&old).list_tags().await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the withdrawn key is still accepted after 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(error_status(&h.with_token(&old).list_tags().await.unwrap_err()), Some(401));
    h.admin().list_tags().await.unwrap();
}

/// With `audience` set, a token must name it in `aud`.
pub async fn audiences_are_checked_when_configured(backend: Backend) {
    let h = Harness::start_with(backend, |c| c.uaa.audience = Some("network".into())).await;
    h.admin().list_tags().await.unwrap();
    let client = h.cf.uaa.client_token(testkit::POLICY_SERVER_CLIENT);
    assert_eq!(error_status(&h.with_token(&client).list_tags().await.unwrap_err()), Some(401));
    let h = Harness::start_with(backend, |c| c.uaa.audience = Some("another-service".into())).await;
    assert_eq!(error_status(&h.admin().list_tags().await.unwrap_err()), Some(401));
}

pub async fn unknown_kids_are_rate_limited(backend: Backend) {
    let h = Harness::start(backend).await;
    h.admin().list_tags().await.unwrap();
    let fetched = h.cf.uaa.token_keys_calls();
    for i in 0..20 {
        let t =
            h.cf.uaa
                .user_token_with("admin", testkit::TokenRequest { kid: Some(format!("k{i}")), ..Default::default() });
        assert_eq!(error_status(&h.with_token(&t).list_tags().await.unwrap_err()), Some(401));
    }
    assert_eq!(h.cf.uaa.token_keys_calls(), fetched, "no refetch inside the minimum interval");
}

use futures::StreamExt;

pub async fn tags_are_unique_under_concurrency(backend: Backend) {
    // Two server instances on one database, 50 clients creating and deleting overlapping
    // policies at once.
    let h = Harness::start(backend).await;
    let second = policy_api::Server::start(&h.config).await.unwrap();
    for i in 0..20 {
        h.cf.cc.add_app(&format!("c-{i}"), &format!("c-{i}"), "space-1");
    }
    let token = h.cf.uaa.user_token("admin");
    let urls = [h.url(), second.url()];
    let mut tasks = Vec::new();
    for worker in 0..50 {
        let url = urls[worker % 2].clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let client = policy_client::Client::new_with_token(&url, &token).unwrap();
            for round in 0..4 {
                let src = format!("c-{}", (worker + round) % 20);
                let dst = format!("c-{}", (worker * 7 + round) % 20);
                let port = (worker % 5 + 1) as i32;
                let req =
                    body(vec![p(&src, &dst, Protocol::Tcp, port, port), p(&dst, &src, Protocol::Udp, port, port)]);
                client.create_policies(&req).await.expect("create under contention");
                if round % 2 == 1 {
                    client.delete_policies(&req).await.expect("delete under contention");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let admin = h.admin();
    let listed = all(&admin).await;
    let unique: HashSet<_> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "no duplicate policies");
    // Exactly the policies created in even rounds survive (odd rounds deleted theirs, and an
    // even round of one worker may be deleted by another worker's odd round with the same key).
    let mut expected = HashSet::new();
    let mut deleted = HashSet::new();
    for worker in 0..50usize {
        for round in 0..4usize {
            let src = format!("c-{}", (worker + round) % 20);
            let dst = format!("c-{}", (worker * 7 + round) % 20);
            let port = (worker % 5 + 1) as i32;
            let keys =
                [(src.clone(), dst.clone(), "tcp".to_string(), port, port), (dst, src, "udp".to_string(), port, port)];
            for k in keys {
                if round % 2 == 1 {
                    deleted.insert(k);
                } else {
                    expected.insert(k);
                }
            }
        }
    }
    for k in &listed {
        assert!(expected.contains(k) || deleted.contains(k), "unexpected policy {k:?}");
    }
    for k in expected.difference(&deleted) {
        assert!(unique.contains(k), "lost policy {k:?}");
    }
    let tags = admin.list_tags().await.unwrap().into_inner().tags;
    let tag_values: HashSet<_> = tags.iter().map(|t| t.tag.clone()).collect();
    let tag_ids: HashSet<_> = tags.iter().map(|t| t.id.clone()).collect();
    assert_eq!(tag_values.len(), tags.len(), "never two apps with one tag");
    assert_eq!(tag_ids.len(), tags.len(), "never two tags for one app");
    let in_policies: HashSet<String> = listed.iter().flat_map(|k| [k.0.clone(), k.1.clone()]).collect();
    assert_eq!(tag_ids, in_policies, "tags exactly for the apps in policies");
    second.shutdown().await;
}

pub async fn replicas_migrate_together(backend: Backend) {
    let cf = testkit::Cf::start().await.unwrap();
    let db = crate::harness::TestDb::create(backend).await;
    let config = crate::harness::config_for(&cf, &db);
    let (a, b, c) = tokio::join!(
        policy_api::Server::start(&config),
        policy_api::Server::start(&config),
        policy_api::Server::start(&config)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let client = policy_client::Client::new_with_token(&b.url(), &cf.uaa.user_token("admin")).unwrap();
    client.create_policies(&body(vec![p(APP_1, APP_2, Protocol::Tcp, 1, 1)])).await.unwrap();
    let tags = client.list_tags().await.unwrap().into_inner().tags;
    assert_eq!(tags.len(), 2);
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

/// Two replicas on one database, 50 clients creating, deleting and listing at once, and three
/// cells watching: no policy is lost or doubled, tags stay unique, and every watch ends on the
/// final state. Each client owns its ports, so the last thing it did to a policy decides
/// whether that policy must exist.
pub async fn concurrent_clients_lose_nothing(backend: Backend) {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const CLIENTS: usize = 50;
    const RUN: std::time::Duration = std::time::Duration::from_secs(8);
    let h = Harness::start_internal(backend, |_| {}).await;
    let mut config = h.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.internal.listen = "127.0.0.1:0".parse().unwrap();
    let second = policy_api::Server::start(&config).await.unwrap();
    let urls = [h.url(), second.url()];
    let internal = [h.internal_url(), format!("https://{}", second.internal_addr.unwrap())];
    let apps: Vec<String> = (0..10).map(|i| format!("c-{i}")).collect();
    let ids = apps.join(",");
    let token = h.cf.uaa.user_token("admin");
    let done = Arc::new(AtomicBool::new(false));

    // Cells: watch the apps' policies through either replica until the writers stop.
    let mut cells = Vec::new();
    for c in 0..3 {
        let http = h.cell_http(None, true);
        let client = policy_client::Client::new_with_client(&internal[c % 2], http);
        let (ids, done) = (ids.clone(), done.clone());
        cells.push(tokio::spawn(async move {
            let mut last: Option<(types::PolicyList, String)> = None;
            loop {
                let finished = done.load(Ordering::Relaxed);
                let etag = last.as_ref().map(|l| l.1.clone());
                let wait = if finished { None } else { Some("1s") };
                match policy_client::watched(client.internal_policies(Some(&ids), wait, etag.as_deref()).await).unwrap()
                {
                    policy_client::Watched::Changed { value, etag } => last = Some((value, etag.unwrap())),
                    policy_client::Watched::NotModified => {}
                }
                if finished {
                    return last.unwrap().0;
                }
            }
        }));
    }

    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for i in 0..CLIENTS {
        let client = policy_client::Client::new_with_token(&urls[i % 2], &token).unwrap();
        let apps = apps.clone();
        writers.push(tokio::spawn(async move {
            let mut last: HashMap<(String, String, i32), bool> = HashMap::new();
            let mut k = 0usize;
            while started.elapsed() < RUN {
                let (src, dst) = (&apps[(i + k) % 10], &apps[(i * 7 + k * 3) % 10]);
                let port = (1000 + i * 10 + k % 10) as i32;
                let req = body(vec![p(src, dst, Protocol::Tcp, port, port)]);
                match (i * 31 + k * 17) % 3 {
                    0 | 1 if k % 4 != 3 => {
                        client.create_policies(&req).await.expect("create under contention");
                        last.insert((src.clone(), dst.clone(), port), true);
                    }
                    0 | 1 => {
                        client.delete_policies(&req).await.expect("delete under contention");
                        last.insert((src.clone(), dst.clone(), port), false);
                    }
                    _ => {
                        client.list_policies(None, None, None).await.expect("list under contention");
                    }
                }
                k += 1;
            }
            last
        }));
    }
    let mut expected = std::collections::BTreeSet::new();
    for w in writers {
        for ((s, d, port), present) in w.await.unwrap() {
            if present {
                expected.insert((s, d, "tcp".to_string(), port, port));
            }
        }
    }
    // Cells are answered from each replica's snapshot, which follows the other replica's
    // writes within its poll interval: wait until both serve the final state.
    let views: Vec<_> =
        internal.iter().map(|url| policy_client::Client::new_with_client(url, h.cell_http(None, true))).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let a = views[0].internal_policies(Some(&ids), None, None).await.unwrap().into_inner();
        let b = views[1].internal_policies(Some(&ids), None, None).await.unwrap().into_inner();
        if a == b && a.total_policies as usize == expected.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the replicas' snapshots never agreed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);

    for client in [h.admin(), policy_client::Client::new_with_token(&second.url(), &token).unwrap()] {
        let got = all(&client).await;
        let unique: std::collections::BTreeSet<_> = got.iter().cloned().collect();
        assert_eq!(unique.len(), got.len(), "a policy is listed twice");
        assert_eq!(unique, expected, "the stored policies are exactly what the clients did last");
    }
    let tags = h.admin().list_tags().await.unwrap().into_inner().tags;
    let tag_values: std::collections::HashSet<_> = tags.iter().map(|t| t.tag.clone()).collect();
    let tag_ids: std::collections::HashSet<_> = tags.iter().map(|t| t.id.clone()).collect();
    assert_eq!((tag_values.len(), tag_ids.len()), (tags.len(), tags.len()), "tags are unique");

    let cell = h.cell();
    let final_answer = cell.internal_policies(Some(&ids), None, None).await.unwrap().into_inner();
    for c in cells {
        assert_eq!(c.await.unwrap(), final_answer, "a cell's watch ended elsewhere than the final state");
    }
    assert_eq!(final_answer.total_policies as usize, expected.len());
    second.shutdown().await;
}
