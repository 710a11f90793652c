//! A policy server on a real database with the UAA and Cloud Controller doubles.

use std::sync::atomic::{AtomicU32, Ordering};

use policy_api::Server;
use policy_api::config::Config;
use policy_client::{Client, ClientInfo};
use sea_orm::sqlx::{self, Connection, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

pub fn postgres_admin_url() -> String {
    std::env::var("C2C_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn mysql_admin_url() -> String {
    std::env::var("C2C_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: String,
    _dir: Option<tempdir::TempDir>,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique_name() -> String {
    format!("c2c_test_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), rand_suffix())
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 100_000
}

fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("database URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

impl TestDb {
    pub async fn create(backend: Backend) -> TestDb {
        let name = unique_name();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).unwrap();
                let url = format!("sqlite://{}/policy.db?mode=rwc", dir.display());
                TestDb { backend, url, name, _dir: Some(tempdir::TempDir(dir)) }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required for this test and is not reachable at {admin}: {e}. \
                         Start it (see README, Tests) or set C2C_TEST_POSTGRES_URL."
                    )
                });
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
                TestDb { backend, url: with_db(&admin, &name), name, _dir: None }
            }
            Backend::Mysql => {
                let admin = mysql_admin_url();
                let mut conn = sqlx::MySqlConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "MariaDB/MySQL is required for this test and is not reachable at {admin}: {e}. \
                         Start it (see README, Tests) or set C2C_TEST_MYSQL_URL."
                    )
                });
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
                TestDb { backend, url: with_db(&admin, &name), name, _dir: None }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (backend, name) = (self.backend, self.name.clone());
        if backend == Backend::Sqlite {
            return;
        }
        // Drop runs outside async; a short-lived runtime on another thread does the I/O.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                match backend {
                    Backend::Postgres => {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                            let _ = c
                                .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                                .await;
                        }
                    }
                    Backend::Mysql => {
                        if let Ok(mut c) = sqlx::MySqlConnection::connect(&mysql_admin_url()).await {
                            let _ = c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).await;
                        }
                    }
                    Backend::Sqlite => {}
                }
            })
        })
        .join();
    }
}

pub struct Harness {
    /// The test CA and its directory, when the cells' API is on.
    pub pki: Option<(testkit::pki::TestCa, tempdir::TempDir)>,
    pub cf: testkit::Cf,
    pub server: Server,
    pub config: Config,
    #[allow(dead_code)] // held so the database outlives the server
    pub db: TestDb,
}

pub fn config_for(cf: &testkit::Cf, db: &TestDb) -> Config {
    let mut config = policy_api::dev::config_for_doubles(cf, &db.url);
    config.database_max_connections = 5;
    // Upstream's integration tests use one-byte tags too: a 255-row pool is quick to fill.
    config.tag_length = 1;
    // Every test sees Cloud Controller changes at once.
    config.cloud_controller.cache_ttl_secs = 0;
    config
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Harness {
        let cf = testkit::Cf::start().await.unwrap();
        let db = TestDb::create(backend).await;
        let mut config = config_for(&cf, &db);
        tweak(&mut config);
        let server = Server::start(&config).await.unwrap();
        Harness { pki: None, cf, server, config, db }
    }

    /// A server with the cells' API on (mTLS, test CA), short background intervals.
    pub async fn start_internal(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = std::env::temp_dir().join(unique_name());
        let ca = testkit::pki::TestCa::new(&dir, "ca");
        let server_cert = ca.server("policy-server", &[]);
        let cf = testkit::Cf::start().await.unwrap();
        let db = TestDb::create(backend).await;
        let mut config = config_for(&cf, &db);
        config.internal.listen = "127.0.0.1:0".parse().unwrap();
        config.internal.tls = Some(policy_api::tls::TlsFiles {
            cert_file: server_cert.cert,
            key_file: server_cert.key,
            client_ca_file: Some(server_cert.ca),
        });
        config.internal.snapshot_poll_interval_ms = 200;
        config.internal.asg_sync_interval_secs = 1;
        config.internal.registration_prune_interval_secs = 1;
        // Most tests speak for many cells with one certificate (upstream's mode); the
        // default, certificates naming their cell, has tests of its own.
        config.internal.cell_identity = policy_api::cell_identity::CellIdentity::AnyClientCertificate;
        tweak(&mut config);
        let server = Server::start(&config).await.unwrap();
        Harness { pki: Some((ca, tempdir::TempDir(dir))), cf, server, config, db }
    }

    pub fn internal_url(&self) -> String {
        format!("https://{}", self.server.internal_addr.expect("internal API on"))
    }

    /// An HTTP client for the cells' API presenting a certificate of `ca` (the test CA when
    /// `None`), or no certificate with `with_cert = false`.
    pub fn cell_http(&self, ca: Option<&testkit::pki::TestCa>, with_cert: bool) -> reqwest::Client {
        let own = &self.pki.as_ref().expect("internal API on").0;
        let signer = ca.unwrap_or(own);
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(own.cert_pem.as_bytes()).unwrap());
        if with_cert {
            let cert = signer.client(&format!("cell-{}", unique_name()));
            let mut pem = std::fs::read(&cert.cert).unwrap();
            pem.extend(std::fs::read(&cert.key).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }

    /// The generated client on the cells' API, as a cell with a good certificate.
    pub fn cell(&self) -> Client {
        Client::new_with_client(&self.internal_url(), self.cell_http(None, true))
    }

    /// A cells' API client whose certificate (from the test CA) names `ips` as IP SANs.
    pub fn cell_for(&self, ips: &[&str]) -> Client {
        let ca = &self.pki.as_ref().expect("internal API on").0;
        let cert = ca.client_for(&format!("cell-{}", unique_name()), ips);
        let mut pem = std::fs::read(&cert.cert).unwrap();
        pem.extend(std::fs::read(&cert.key).unwrap());
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        Client::new_with_client(&self.internal_url(), http)
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The generated client, logged in as a user of the UAA double.
    pub fn client(&self, user: &str) -> Client {
        Client::new_with_token(&self.url(), &self.cf.uaa.user_token(user)).unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client("admin")
    }

    /// The client with a raw token (for token tests).
    pub fn with_token(&self, token: &str) -> Client {
        Client::new_with_token(&self.url(), token).unwrap()
    }

    /// Sends raw bytes through the generated client's HTTP client (for bodies the typed
    /// client cannot express).
    pub async fn raw(
        &self,
        client: &Client,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let url = format!("{}{}", client.baseurl(), path);
        let req = client.client().request(method.parse().unwrap(), url).body(body);
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        // Every answer this helper sees must be one the spec documents (404/405 are the
        // router's own, outside any operation; 406 is for versions the spec has no path for).
        if ![404, 405, 406].contains(&status) {
            let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
            crate::spec::validate_response(method, path, status, content_type, &text);
        }
        (status, text, headers)
    }
}
