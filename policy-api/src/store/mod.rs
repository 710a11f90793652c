//! The policy store: SeaORM over SQLite (default), PostgreSQL or MySQL/MariaDB.
//!
//! Every mutation runs in one transaction that first bumps the single `policies_info` row.
//! That row lock serialises writers across all replicas sharing the database, so tag
//! allocation ("lowest free tag first") needs no further locking; whatever still conflicts
//! (deadlocks, SQLite busy) is retried as a whole. Work per request is a fixed number of
//! batched statements, not a handful per policy.

mod asgs;
mod changes;
pub mod entities;
mod leases;
mod locks;
mod migration;
mod policies;
mod registrations;
mod retry;
mod tags;
mod versions;

use std::future::Future;
use std::time::{Duration, Instant};

use sea_orm::sea_query::SelectStatement;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, FromQueryResult};
use sea_orm_migration::MigratorTrait;

pub use changes::{KEEP_VERSIONS, log_covers};
pub use leases::LeaseStoreError;
pub use policies::{CreateLimits, PolicyChange, Written, count_sources};
pub use tags::Tag;
pub use versions::{PolicyVersion, Versions, now_secs};

/// Upper bound of values bound in one statement, well under every backend's limit.
const CHUNK: usize = 500;
/// How often a transaction that lost a race is re-run before the request fails.
const ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error(
        "failed to find available tag: all {0} tags are in use; run the stale-policy cleanup or remove policies of apps you no longer need"
    )]
    TagsExhausted(usize),
    #[error("policy quota exceeded")]
    QuotaExceeded,
    #[error("the policy writer has stopped (the server is shutting down)")]
    Stopped,
    #[error("the database did not finish the write within {0:?}; nothing was committed")]
    Deadline(Duration),
    #[error(
        "this request would tag {wanted} new apps, but this caller may tag only {left} more this hour; try again later or ask an admin"
    )]
    TagBudget { wanted: u64, left: u64 },
    #[error(
        "id {requested:?} differs only in case from the existing {existing:?}, and this database (MySQL/MariaDB) compares ids without case; use the existing id"
    )]
    CaseConflict { requested: String, existing: String },
    #[error("group {guid} exists with type {kind}; a policy needs an app group")]
    TypeConflict { guid: String, kind: String },
    #[error(
        "unsupported database URL scheme in {0:?}: use sqlite://PATH?mode=rwc, sqlite::memory:, postgres://... or mysql://..."
    )]
    UnsupportedUrl(String),
    #[error("tag_length must be 1 or 2 (VXLAN GBP carries 16 bits), got {0}")]
    BadTagLength(u8),
    #[error("could not take the migration lock: {0}")]
    Lock(String),
    #[error("{0}: create the directory, writable by this user, or change database_url")]
    Create(String),
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub connect_timeout: Duration,
    pub tag_length: u8,
    /// Longest a statement may run, and wait for a lock, on the database server
    /// (PostgreSQL, MySQL/MariaDB), so a stuck query frees its connection.
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 20,
            connect_timeout: Duration::from_secs(30),
            tag_length: 2,
            statement_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    tag_length: u8,
    url: String,
}

/// The file of a `sqlite://PATH?...` URL; `None` for in-memory databases.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && !path.starts_with(":memory:") && !url.contains("mode=memory")).then(|| path.to_string())
}

/// Creates `path` readable by its owner only, unless it exists. SQLite gives its `-wal` and
/// `-shm` files the database file's mode, so they follow. The database holds every policy
/// and the cells' leases; other local users have no business reading it.
fn create_private(path: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Create(format!("cannot create {path}: {e}"))),
    }
}

fn record<T>(op: &'static str, started: Instant, result: &Result<T, StoreError>) {
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!("c2c_store_operation_duration_seconds", "op" => op).record(elapsed);
    if result.is_err() {
        metrics::counter!("c2c_store_errors_total", "op" => op).increment(1);
    }
}

impl Store {
    /// Connects, runs pending migrations under a lock shared by all replicas, and makes sure
    /// the tag pool holds every tag of `tag_length`.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        if !(1..=2).contains(&options.tag_length) {
            return Err(StoreError::BadTagLength(options.tag_length));
        }
        let memory = url.starts_with("sqlite::memory:") || url.contains("mode=memory");
        if !(url.starts_with("sqlite:") || url.starts_with("postgres") || url.starts_with("mysql:")) {
            return Err(StoreError::UnsupportedUrl(crate::config::redact_url(url)));
        }
        if let Some(path) = sqlite_path(url) {
            create_private(&path)?;
        }
        let mut opts = ConnectOptions::new(url.to_string());
        opts.max_connections(Ord::max(options.max_connections, 2))
            .connect_timeout(options.connect_timeout)
            .acquire_timeout(options.connect_timeout)
            .sqlx_logging(false);
        if url.starts_with("sqlite:") {
            // An in-memory database lives as long as its one connection.
            if memory {
                opts.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
            }
            opts.map_sqlx_sqlite_opts(|o| {
                o.busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            });
        }
        let timeout_ms = options.statement_timeout.as_millis().max(1).to_string();
        if url.starts_with("postgres") {
            let ms = timeout_ms.clone();
            opts.map_sqlx_postgres_opts(move |o| {
                o.options([("statement_timeout", ms.as_str()), ("lock_timeout", ms.as_str())])
            });
        }
        if url.starts_with("mysql:") {
            let secs = options.statement_timeout.as_secs().max(1);
            opts.after_connect(move |conn| {
                Box::pin(async move {
                    conn.execute_unprepared(&format!("SET SESSION innodb_lock_wait_timeout = {secs}")).await?;
                    // MariaDB's name, then MySQL's (which bounds SELECTs only); one of them fails.
                    let mariadb = conn.execute_unprepared(&format!("SET SESSION max_statement_time = {secs}")).await;
                    if mariadb.is_err() {
                        let _ =
                            conn.execute_unprepared(&format!("SET SESSION max_execution_time = {}", secs * 1000)).await;
                    }
                    Ok(())
                })
            });
        }
        let db = Database::connect(opts).await?;
        let store = Store { db, tag_length: options.tag_length, url: url.to_string() };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn tag_length(&self) -> u8 {
        self.tag_length
    }

    /// Runs migrations and fills the tag pool, holding a database-wide lock so that replicas
    /// starting together do this one at a time.
    async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend() {
            DbBackend::Postgres => {
                use sea_orm::sqlx::Executor;
                let pool = self.db.get_postgres_connection_pool();
                let mut conn = pool.acquire().await.map_err(|e| StoreError::Lock(e.to_string()))?;
                // Any constant works as long as every replica uses the same one.
                conn.execute("SELECT pg_advisory_lock(7243001)").await.map_err(|e| StoreError::Lock(e.to_string()))?;
                let result = self.migrate_locked().await;
                let _ = conn.execute("SELECT pg_advisory_unlock(7243001)").await;
                result
            }
            DbBackend::MySql => {
                use sea_orm::sqlx::Executor;
                let pool = self.db.get_mysql_connection_pool();
                let mut conn = pool.acquire().await.map_err(|e| StoreError::Lock(e.to_string()))?;
                conn.execute("SELECT GET_LOCK('c2c-migrate', 600)")
                    .await
                    .map_err(|e| StoreError::Lock(e.to_string()))?;
                let result = self.migrate_locked().await;
                let _ = conn.execute("SELECT RELEASE_LOCK('c2c-migrate')").await;
                result
            }
            _ => {
                // SQLite: a lock file beside the database serialises processes (and servers
                // in one process) that start together.
                let Some(path) = sqlite_path(&self.url) else { return self.migrate_locked().await };
                let lock_path = format!("{path}.migrate-lock");
                create_private(&lock_path)?;
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| StoreError::Lock(format!("{lock_path}: {e}")))?;
                let file = tokio::task::spawn_blocking(move || file.lock().map(|_| file))
                    .await
                    .map_err(|e| StoreError::Lock(e.to_string()))?
                    .map_err(|e| StoreError::Lock(format!("{lock_path}: {e}")))?;
                let result = self.migrate_locked().await;
                let _ = file.unlock();
                result
            }
        }
    }

    async fn migrate_locked(&self) -> Result<(), StoreError> {
        migration::Migrator::up(&self.db, None).await?;
        self.fill_tag_pool().await
    }

    /// Runs `attempt` until it succeeds, fails for good, or has lost `ATTEMPTS` races.
    async fn retrying<T, F, Fut>(&self, op: &'static str, attempt: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let mut tries = 0;
        let result = loop {
            tries += 1;
            match attempt().await {
                Err(StoreError::Db(e)) if tries < ATTEMPTS && retry::is_transient(&e) => {
                    metrics::counter!("c2c_store_retries_total", "op" => op).increment(1);
                    let jitter = rand::random::<u64>() % (5 * u64::from(tries));
                    tokio::time::sleep(Duration::from_millis(jitter + u64::from(tries))).await;
                }
                other => break other,
            }
        };
        record(op, started, &result);
        result
    }

    /// `SELECT 1`, for `/health`.
    pub async fn check(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.db.execute_unprepared("SELECT 1").await.map(|_| ()).map_err(StoreError::from);
        record("check", started, &result);
        result
    }
}

/// Runs a select and reads every row into `T` by column name.
async fn fetch<T: FromQueryResult, C: ConnectionTrait>(db: &C, stmt: &SelectStatement) -> Result<Vec<T>, StoreError> {
    let rows = db.query_all(stmt).await?;
    rows.iter().map(|r| T::from_query_result(r, "").map_err(StoreError::from)).collect()
}

/// Runs a select and reads its first row, if any, into `T` by column name.
async fn fetch_one<T: FromQueryResult, C: ConnectionTrait>(
    db: &C,
    stmt: &SelectStatement,
) -> Result<Option<T>, StoreError> {
    match db.query_one(stmt).await? {
        Some(r) => Ok(Some(T::from_query_result(&r, "")?)),
        None => Ok(None),
    }
}
