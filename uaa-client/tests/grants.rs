//! The grants against the UAA double, over real HTTP.

use testkit::Uaa;
use uaa_client::UaaError;

async fn uaa() -> Uaa {
    Uaa::builder()
        .user("alice", "password", &["openid", "network.write"])
        .client("network-policy", "s3cret", &["uaa.resource", "cloud_controller.admin_read_only"])
        .token_lifetime_secs(600)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn client_credentials_give_a_token_with_its_scopes_and_lifetime() {
    let uaa = uaa().await;
    let client =
        uaa_client::Uaa::new(reqwest::Client::new(), &format!("{}/", uaa.url()), "network-policy", "s3cret").unwrap();
    let grant = client.client_credentials().await.unwrap();
    let claims = uaa.verify(&grant.access_token).expect("a token UAA signed");
    assert_eq!(claims.client_id, "network-policy");
    assert_eq!(grant.scopes, ["uaa.resource", "cloud_controller.admin_read_only"]);
    assert_eq!(grant.expires_in, Some(std::time::Duration::from_secs(600)));
    assert!(grant.refresh_token.is_none());
    assert!(!format!("{grant:?}").contains(&grant.access_token), "Debug hides the token");
}

#[tokio::test]
async fn a_wrong_secret_is_refused_not_a_transport_error() {
    let uaa = uaa().await;
    let client = uaa_client::Uaa::new(reqwest::Client::new(), &uaa.url(), "network-policy", "wrong").unwrap();
    let err = client.client_credentials().await.unwrap_err();
    assert!(matches!(err, UaaError::Refused(_)), "{err:?}");
    let grants = uaa.token_grants();
    assert_eq!(grants, 0);
}

#[tokio::test]
async fn refresh_gives_a_new_token_for_the_same_user() {
    let uaa = uaa().await;
    let refresh = uaa.refresh_token("alice");
    let cf = uaa_client::Uaa::new(reqwest::Client::new(), &uaa.url(), "cf", "").unwrap();
    let grant = cf.refresh(&refresh).await.unwrap();
    let claims = uaa.verify(&grant.access_token).unwrap();
    assert_eq!(claims.user_name.as_deref(), Some("alice"));
    assert_eq!(claims.grant_type, "refresh_token");
    assert!(grant.refresh_token.is_some(), "UAA's rotated refresh token is passed on");

    let err = cf.refresh("made-up").await.unwrap_err();
    assert!(matches!(err, UaaError::Refused(_)), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_uaa_is_a_transport_error_and_a_bad_url_is_refused() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client =
        uaa_client::Uaa::new(reqwest::Client::new(), &format!("http://127.0.0.1:{port}"), "network-policy", "s3cret")
            .unwrap();
    assert!(matches!(client.client_credentials().await.unwrap_err(), UaaError::Transport(_)));
    assert!(matches!(uaa_client::Uaa::new(reqwest::Client::new(), "not a url", "c", "s"), Err(UaaError::Url(_))));
}
