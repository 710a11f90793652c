//! The plugin end to end as cf runs it: Go's own `net/rpc` + `encoding/gob` (a small Go
//! program standing in for cf, `tests/go-peer`) runs `cf-c2c <port> <command> ...` against a
//! real policy server with the UAA and Cloud Controller doubles.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use harness::scratch::TempDir;

/// Builds the Go peer once per test run. Needs Debian's `golang-go` (CI installs it).
fn go_peer() -> PathBuf {
    static PEER: OnceLock<PathBuf> = OnceLock::new();
    PEER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("c2c-go-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("go-peer");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go-peer");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(src)
            .env("GOCACHE", dir.join("cache"))
            .env("GOFLAGS", "-mod=mod")
            .env("GO111MODULE", "on")
            .status()
            .unwrap_or_else(|e| {
                panic!("Go is required for the plugin protocol tests (apt-get install golang-go): {e}")
            });
        assert!(status.success(), "building the Go peer failed");
        out
    })
    .clone()
}

/// The plugin binary of this build.
fn cf_c2c() -> PathBuf {
    harness::bins::path("cf-c2c")
}

struct World {
    cf: testkit::Cf,
    server: policy_api::Server,
    _dir: TempDir,
}

async fn world() -> World {
    let cf = testkit::Cf::start().await.unwrap();
    let dir = TempDir::new("c2c-plugin");
    let db = format!("sqlite://{}?mode=rwc", dir.join("p.db").display());
    let mut config = policy_api::dev::config_for_doubles(&cf, &db);
    config.tag_length = 1;
    config.cloud_controller.cache_ttl_secs = 0;
    let server = policy_api::Server::start(&config).await.unwrap();
    cf.cc.set_policy_server_url(&server.url());
    World { cf, server, _dir: dir }
}

struct Run {
    code: i32,
    out: String,
    err: String,
}

/// Runs `cf <args>` the way cf runs plugin commands, as `user`.
async fn cf(w: &World, user: &str, args: &[&str]) -> Run {
    let token = if user.is_empty() { String::new() } else { w.cf.uaa.user_token(user) };
    cf_with_token(w, user, token, args).await
}

async fn cf_with_token(w: &World, user: &str, token: String, args: &[&str]) -> Run {
    let peer = go_peer();
    let api = w.cf.cc.url();
    let scratch = TempDir::new("c2c-meta");
    let metadata = scratch.join("metadata.json");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let meta = metadata.clone();
    let user = user.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(peer)
            .arg(cf_c2c())
            .args(&args)
            .env("PEER_TOKEN", token)
            .env("PEER_API", api)
            .env("PEER_ORG_GUID", "org-1")
            .env("PEER_ORG", "o")
            .env("PEER_SPACE_GUID", "space-1")
            .env("PEER_SPACE", "s1")
            .env("PEER_USER", user)
            .env("PEER_METADATA_OUT", meta)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_metadata_through_go_net_rpc() {
    let _w = world().await;
    let scratch = TempDir::new("c2c-meta");
    let out = scratch.join("metadata.json");
    let status =
        Command::new(go_peer()).arg(cf_c2c()).arg("SendMetadata").env("PEER_METADATA_OUT", &out).status().unwrap();
    assert!(status.success());
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(meta["Name"], "c2c");
    let names: Vec<&str> = meta["Commands"].as_array().unwrap().iter().map(|c| c["Name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["c2c-policies", "c2c-add-policy", "c2c-remove-policy", "c2c-apply", "c2c-check"]);
    let add = &meta["Commands"][1];
    assert_eq!(add["HelpText"], "Create policy to allow direct network traffic from one app to another");
    assert_eq!(add["UsageDetails"]["Options"]["protocol"], "Protocol to connect apps with (Default: tcp)");
    assert_eq!(meta["LibraryVersion"]["Major"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_list_remove_like_the_builtins() {
    let w = world().await;
    let r = cf(&w, "admin", &["c2c-add-policy", "app-1", "app-2", "--protocol", "tcp", "--port", "8080-8090"]).await;
    assert_eq!(r.code, 0, "{}{}", r.out, r.err);
    assert_eq!(r.out, "Adding network policy from app app-1 to app app-2 in org o / space s1 as admin...\nOK\n\n");
    let r = cf(&w, "admin", &["c2c-add-policy", "app-2", "app-3", "-s", "s2"]).await;
    assert_eq!(r.code, 0, "{}{}", r.out, r.err);
    assert_eq!(
        r.out,
        "Adding network policy from app app-2 in org o / space s1 to app app-3 in org o / space s2 as admin...\nOK\n\n"
    );

    let r = cf(&w, "admin", &["c2c-policies"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(
        r.out,
        "Listing network policies in org o / space s1 as admin...\n\n\
         source   destination   protocol   ports       destination space   destination org\n\
         app-1    app-2         tcp        8080-8090   s1                  o\n\
         app-2    app-3         tcp        8080        s2                  o\n"
    );
    let r = cf(&w, "admin", &["c2c-policies", "--source", "app-2"]).await;
    assert!(r.out.starts_with("Listing network policies of app app-2 in org o / space s1 as admin..."), "{}", r.out);
    assert_eq!(r.out.lines().count(), 4);

    let r = cf(&w, "admin", &["c2c-remove-policy", "app-1", "app-2", "--protocol", "tcp", "--port", "8080"]).await;
    assert_eq!(r.code, 0);
    assert_eq!(
        r.out,
        "Removing network policy from app app-1 to app app-2 in org o / space s1 as admin...\nPolicy does not exist.\nOK\n\n"
    );
    let r = cf(&w, "admin", &["c2c-remove-policy", "app-1", "app-2", "--protocol", "tcp", "--port", "8080-8090"]).await;
    assert_eq!(r.code, 0);
    assert!(!r.out.contains("does not exist"));
    let admin = policy_client::Client::new_with_token(&w.server.url(), &w.cf.uaa.user_token("admin")).unwrap();
    assert_eq!(admin.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_print_cf_messages_and_fail() {
    let w = world().await;
    let cases: &[(&str, &[&str], &str)] = &[
        ("admin", &["c2c-add-policy", "app-1", "nope"], "App 'nope' not found.\n"),
        ("admin", &["c2c-add-policy", "app-1", "app-3", "-s", "nowhere"], "Space 'nowhere' not found.\n"),
        ("admin", &["c2c-add-policy", "app-1", "app-3", "-s", "s2", "-o", "nope"], "Organization 'nope' not found.\n"),
        // alice cannot see space-2 in Cloud Controller, as cf would report.
        ("alice", &["c2c-add-policy", "app-1", "app-3", "-s", "s2"], "Space 's2' not found.\n"),
        (
            "bob",
            &["c2c-add-policy", "app-1", "app-2"],
            "provided scopes [openid cloud_controller.read] do not include allowed scopes [network.admin network.write]\n",
        ),
        (
            "admin",
            &["c2c-add-policy", "app-1", "app-2", "--protocol", "tcp", "--port", "0"],
            "mapper: validate policies: missing start port\n",
        ),
        ("", &["c2c-policies"], "Not logged in. Use 'cf login' or 'cf login --sso' to log in.\n"),
    ];
    for (user, args, message) in cases {
        let r = cf(&w, user, args).await;
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.out, r.err);
        assert_eq!(r.err, *message, "{args:?}");
        assert!(r.out.ends_with("FAILED\n"), "{args:?}: {}", r.out);
    }
    // Flag errors: message and a blank line on stderr, the help on stdout, no FAILED.
    let r = cf(&w, "admin", &["c2c-add-policy", "a", "b", "--protocol", "icmp", "--port", "1"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.err, "Incorrect Usage: PROTOCOL must be \"tcp\" or \"udp\"\n\n");
    assert!(r.out.starts_with("NAME:\n   c2c-add-policy - "), "{}", r.out);
    let r = cf(&w, "admin", &["c2c-add-policy", "a", "b", "--port", "1"]).await;
    assert_eq!(r.err, "Incorrect Usage: --protocol and --port flags must be specified together\n");
    assert!(r.out.starts_with("FAILED\n\nNAME:"), "{}", r.out);

    // A bad port, and an expired token (Cloud Controller refuses it first, as with cf).
    let r = cf(&w, "admin", &["c2c-add-policy", "a", "b", "--protocol", "tcp", "--port", "x"]).await;
    assert_eq!((r.code, r.err.as_str()), (1, "Incorrect Usage: PORT must be a positive integer\n\n"));
    let expired =
        w.cf.uaa.user_token_with("admin", testkit::TokenRequest { lifetime_secs: Some(-600), ..Default::default() });
    let r = cf_with_token(&w, "admin", expired, &["c2c-policies"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.err,
        "The token expired, was revoked, or the token ID is incorrect. Please log back in to re-authenticate.\n"
    );

    // The policy server is down.
    w.cf.cc.set_policy_server_url("http://127.0.0.1:1");
    let r = cf(&w, "admin", &["c2c-policies"]).await;
    assert_eq!(r.code, 1, "{}", r.out);
    assert!(r.err.starts_with("Request error"), "{}", r.err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_hook_exits_zero() {
    let w = world().await;
    let r = cf(&w, "admin", &["CLI-MESSAGE-UNINSTALL"]).await;
    assert_eq!(r.code, 0);
}

/// Standalone: the cf CLI's config file gives target and tokens; an expired access token is
/// refreshed through UAA with the refresh token and saved back, as cf does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_with_the_cf_config() {
    let w = world().await;
    let refresh = w.cf.uaa.refresh_token("admin");
    let expired =
        w.cf.uaa.user_token_with("admin", testkit::TokenRequest { lifetime_secs: Some(-10), ..Default::default() });
    let scratch = TempDir::new("c2c-cf-home");
    let home = scratch.path().to_path_buf();
    std::fs::create_dir_all(home.join(".cf")).unwrap();
    let config = serde_json::json!({
        "ConfigVersion": 3,
        "Target": w.cf.cc.url(),
        "AccessToken": format!("bearer {expired}"),
        "RefreshToken": refresh,
        "UaaEndpoint": w.cf.uaa.url(),
        "UAAOAuthClient": "cf",
        "UAAOAuthClientSecret": "",
        "OrganizationFields": {"GUID": "org-1", "Name": "o"},
        "SpaceFields": {"GUID": "space-1", "Name": "s1", "AllowSSH": true},
        "SSLDisabled": false
    });
    let path = home.join(".cf/config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let run = |args: Vec<&'static str>| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || Command::new(cf_c2c()).args(args).env("CF_HOME", home).output().unwrap())
    };
    let out = run(vec!["add-network-policy", "app-1", "app-2", "--protocol", "udp", "--port", "53"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Adding network policy from app app-1 to app app-2 in org o / space s1 as admin...\nOK\n\n"
    );
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_ne!(saved["AccessToken"], config["AccessToken"], "the refreshed token is saved");
    let out = run(vec!["c2c-policies"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("app-1    app-2         udp        53"), "{text}");
    let out = run(vec!["remove-network-policy", "app-1", "app-2", "--protocol", "udp", "--port", "53"]).await.unwrap();
    assert!(out.status.success());
    // A token the APIs refuse although it has not expired: refreshed and the command retried,
    // printing its output once.
    let mut revoked = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path).unwrap()).unwrap();
    revoked["AccessToken"] = serde_json::Value::String(format!("bearer {}", w.cf.uaa.forged_user_token("admin")));
    std::fs::write(&path, serde_json::to_string(&revoked).unwrap()).unwrap();
    let out = run(vec!["network-policies"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("Listing network policies").count(), 1);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_ne!(saved["AccessToken"], revoked["AccessToken"]);

    // Not logged in at all.
    std::fs::write(&path, r#"{"Target": "http://127.0.0.1:1"}"#).unwrap();
    let out = run(vec!["network-policies"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_check_and_apply() {
    let w = world().await;
    let r = cf(&w, "admin", &["c2c-add-policy", "app-1", "app-2", "--protocol", "tcp", "--port", "8080-8090"]).await;
    assert_eq!(r.code, 0, "{}", r.err);

    let r = cf(&w, "admin", &["c2c-policies", "--output", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    let v: serde_json::Value = serde_json::from_str(&r.out).expect("only JSON on stdout");
    assert_eq!(v["policies"][0]["source"], "app-1");
    assert_eq!(v["policies"][0]["ports"], "8080-8090");
    assert_eq!(v["policies"][0]["destination_space"], "s1");

    let r = cf(&w, "admin", &["c2c-check", "app-1", "app-2", "--protocol", "tcp", "--port", "8085"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("Allowed: app-1 -> app-2 tcp 8085 by the policy for tcp 8080-8090"), "{}", r.out);
    let r = cf(&w, "admin", &["c2c-check", "app-1", "app-2", "--protocol", "udp", "--port", "8085"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.err, "Not allowed: no policy lets app-1 reach app-2 on udp port 8085.\n");

    let dir = TempDir::new("c2c-apply");
    let file = dir.join("policies.yml");
    std::fs::write(
        &file,
        "policies:\n  - source: app-1\n    destination: app-2\n    ports: 8080-8090\n  - source: app-1\n    destination: app-3\n    space: s2\n    protocol: udp\n    port: 53\n",
    )
    .unwrap();
    let path = file.to_str().unwrap().to_string();
    let path: &'static str = Box::leak(path.into_boxed_str());
    let r = cf(&w, "admin", &["c2c-apply", path, "--dry-run"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("+ app-1 -> app-3 udp 53"), "{}", r.out);
    assert!(r.out.contains("(dry run: nothing was changed)"));
    let admin = policy_client::Client::new_with_token(&w.server.url(), &w.cf.uaa.user_token("admin")).unwrap();
    assert_eq!(admin.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 1);
    let r = cf(&w, "admin", &["c2c-apply", path]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(admin.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 2);
    let r = cf(&w, "admin", &["c2c-apply", path]).await;
    assert!(r.out.contains("Nothing to change."), "{}", r.out);

    // --prune removes what the file no longer lists.
    std::fs::write(&file, "policies:\n  - source: app-1\n    destination: app-2\n    ports: 8080-8090\n").unwrap();
    let r = cf(&w, "admin", &["c2c-apply", path, "--prune"]).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("- app-1 -> "), "{}", r.out);
    assert_eq!(admin.list_policies(None, None, None).await.unwrap().into_inner().total_policies, 1);

    std::fs::write(&file, "policies:\n  - source: app-1\n    destinaton: app-2\n").unwrap();
    let r = cf(&w, "admin", &["c2c-apply", path]).await;
    assert_eq!(r.code, 1);
    assert!(r.err.contains("is not a valid policy file"), "{}", r.err);
}
