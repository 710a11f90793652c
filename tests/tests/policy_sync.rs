//! Scripting with the generated client, as a platform team would: every policy of one
//! foundation exported to YAML and applied to another, idempotently, with a dry run first.
//! Two policy servers (SQLite, the UAA and Cloud Controller doubles) stand for the two
//! foundations.

use examples::policy_file::{self, PolicyFile};
use harness::scratch::TempDir;
use policy_client::types::{Policies, Policy, Protocol};

struct Foundation {
    cf: testkit::Cf,
    server: policy_api::Server,
    _dir: TempDir,
}

impl Foundation {
    async fn start() -> Foundation {
        let cf = testkit::Cf::start().await.unwrap();
        let dir = TempDir::new("c2c-foundation");
        let db = format!("sqlite://{}?mode=rwc", dir.join("f.db").display());
        let server = policy_api::Server::start(&policy_api::dev::config_for_doubles(&cf, &db)).await.unwrap();
        Foundation { cf, server, _dir: dir }
    }

    fn admin(&self) -> policy_client::Client {
        policy_client::Client::new_with_token(&self.server.url(), &self.cf.uaa.user_token("admin")).unwrap()
    }

    async fn policies(&self) -> Vec<Policy> {
        let mut all = self.admin().list_policies(None, None, None).await.unwrap().into_inner().policies;
        for p in &mut all {
            p.source.tag = None;
            p.destination.tag = None;
        }
        all.sort_by_key(|p| (p.source.id.clone(), p.destination.id.clone(), p.destination.ports.start));
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_apply_to_another_foundation_idempotently() {
    let (a, b) = (Foundation::start().await, Foundation::start().await);
    let policies = vec![
        Policy::new("app-1", "app-2", Protocol::Tcp, 8080, 8080),
        Policy::new("app-1", "app-3", Protocol::Udp, 9000, 9100),
        Policy::new("app-2", "app-3", Protocol::Tcp, 443, 443),
    ];
    a.admin().create_policies(&Policies { policies }).await.unwrap();
    b.admin()
        .create_policies(&Policies { policies: vec![Policy::new("app-3", "app-1", Protocol::Tcp, 1, 1)] })
        .await
        .unwrap();

    let file = policy_file::export(&a.admin()).await.unwrap();
    let yaml = file.to_yaml();
    assert_eq!(file.policies.len(), 3, "{yaml}");
    assert!(yaml.contains("ports: 9000-9100"), "{yaml}");
    let dir = TempDir::new("c2c-export");
    std::fs::write(dir.join("policies.yaml"), &yaml).unwrap();
    let file = PolicyFile::parse(&std::fs::read_to_string(dir.join("policies.yaml")).unwrap()).unwrap();

    // The dry run says what would change and changes nothing.
    let before = b.policies().await;
    let dry = policy_file::apply(&b.admin(), &file, true, true).await.unwrap();
    assert_eq!((dry.create.len(), dry.delete.len(), dry.unchanged), (3, 1, 0), "{}", dry.summary());
    assert!(dry.summary().contains("- app-3 -> app-1 tcp 1"), "{}", dry.summary());
    assert_eq!(b.policies().await, before, "a dry run changes nothing");

    // Applied with --prune, B holds exactly A's policies; applied again, nothing changes.
    policy_file::apply(&b.admin(), &file, true, false).await.unwrap();
    assert_eq!(b.policies().await, a.policies().await);
    let again = policy_file::apply(&b.admin(), &file, true, false).await.unwrap();
    assert!(again.is_empty(), "{}", again.summary());
    assert_eq!(again.unchanged, 3);
    assert_eq!(policy_file::export(&b.admin()).await.unwrap().to_yaml(), yaml, "the same bytes from both");

    // Without --prune, what the target has beyond the file stays.
    b.admin()
        .create_policies(&Policies { policies: vec![Policy::new("app-3", "app-1", Protocol::Tcp, 1, 1)] })
        .await
        .unwrap();
    let kept = policy_file::apply(&b.admin(), &file, false, false).await.unwrap();
    assert!(kept.is_empty());
    assert_eq!(b.policies().await.len(), 4);
}
