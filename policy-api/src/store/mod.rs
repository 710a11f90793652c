//! The policy store: SeaORM over SQLite (default), PostgreSQL or MySQL/MariaDB.
//!
//! Every mutation runs in one transaction that first bumps the single `policies_info` row.
//! That row lock serialises writers across all replicas sharing the database, so tag
//! allocation ("lowest free tag first") needs no further locking; whatever still conflicts
//! (deadlocks, SQLite busy) is retried as a whole. Work per request is a fixed number of
//! batched statements, not a handful per policy.

mod cells;
pub mod entities;
mod migration;
mod retry;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sea_orm::sea_query::{Alias, CaseStatement, Condition, Expr, ExprTrait, JoinType, OnConflict, Order, Query};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::policy::{Policy, PolicyFilter, Protocol, TaggedPolicy, format_tag};
use entities::{destinations, groups, policies, policies_info};

pub use cells::{LeaseStoreError, Versions, now_secs};

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
}

/// A tag as the tags listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tag {
    pub id: String,
    pub tag: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub connect_timeout: Duration,
    pub tag_length: u8,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 20, connect_timeout: Duration::from_secs(30), tag_length: 2 }
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

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
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
            return Err(StoreError::UnsupportedUrl(url.to_string()));
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
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
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

    /// Inserts the missing rows of the tag pool: ids 1..=2^(8·tag_length)−1.
    async fn fill_tag_pool(&self) -> Result<(), StoreError> {
        let max_tag = (1i64 << (8 * u32::from(self.tag_length))) - 1;
        let stmt = Query::select().expr(Expr::col(groups::Column::Id).max()).from(groups::Entity).to_owned();
        let current: i64 = match self.db.query_one(&stmt).await? {
            Some(row) => row.try_get_by_index::<Option<i32>>(0)?.map(i64::from).unwrap_or(0),
            None => 0,
        };
        let mut next = current + 1;
        while next <= max_tag {
            let last = Ord::min(next + 4999, max_tag);
            let mut insert = Query::insert();
            insert.into_table(groups::Entity).columns([groups::Column::Id]);
            for id in next..=last {
                insert.values_panic([(id as i32).into()]);
            }
            self.db.execute(&insert).await?;
            next = last + 1;
        }
        if current < max_tag {
            // Fresh statistics, so the planner knows most of the pool is free rows.
            let analyze = match self.backend() {
                DbBackend::MySql => "ANALYZE TABLE `groups`",
                DbBackend::Postgres => "ANALYZE \"groups\"",
                _ => "ANALYZE",
            };
            self.db.execute_unprepared(analyze).await?;
        }
        Ok(())
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

    /// Creates the policies that do not exist yet, all in one transaction.
    pub async fn create(&self, policies: &[Policy]) -> Result<Written, StoreError> {
        self.retrying("create", || async {
            let txn = self.db.begin().await?;
            bump(&txn).await?;
            let tagged = self.create_in(&txn, policies).await?;
            let (version, last_updated_ns) = version_in(&txn).await?;
            txn.commit().await?;
            Ok(Written { version, last_updated_ns, change: PolicyChange::Created(tagged) })
        })
        .await
    }

    /// Deletes the policies that exist, all in one transaction; frees tags no policy uses.
    pub async fn delete(&self, policies: &[Policy]) -> Result<Written, StoreError> {
        self.retrying("delete", || async {
            let txn = self.db.begin().await?;
            bump(&txn).await?;
            delete_in(&txn, policies).await?;
            let (version, last_updated_ns) = version_in(&txn).await?;
            txn.commit().await?;
            Ok(Written { version, last_updated_ns, change: PolicyChange::Deleted(policies.to_vec()) })
        })
        .await
    }

    /// Returns the policies asked for with their tags, in the order their rows were
    /// inserted (those that already existed included).
    async fn create_in(&self, txn: &DatabaseTransaction, policies: &[Policy]) -> Result<Vec<TaggedPolicy>, StoreError> {
        // Allocation order is upstream's: for each policy, source then destination.
        let mut order: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for p in policies {
            for guid in [p.source.as_str(), p.destination.as_str()] {
                if seen.insert(guid) {
                    order.push(guid);
                }
            }
        }
        let mut ids = group_ids(txn, &order, true).await?;
        let missing: Vec<&str> = order.iter().copied().filter(|g| !ids.contains_key(*g)).collect();
        if !missing.is_empty() {
            let free_stmt = Query::select()
                .column(groups::Column::Id)
                .from(groups::Entity)
                .and_where(Expr::col(groups::Column::Guid).is_null())
                .order_by(groups::Column::Id, Order::Asc)
                .limit(missing.len() as u64)
                .to_owned();
            let free: Vec<i32> = txn
                .query_all(&free_stmt)
                .await?
                .iter()
                .map(|r| r.try_get_by_index::<i32>(0))
                .collect::<Result<_, _>>()?;
            if free.len() < missing.len() {
                let pool = (1usize << (8 * u32::from(self.tag_length))) - 1;
                return Err(StoreError::TagsExhausted(pool));
            }
            let claims: Vec<(i32, &str)> = free.into_iter().zip(missing.iter().copied()).collect();
            for chunk in claims.chunks(CHUNK) {
                let mut case = CaseStatement::new();
                for (id, guid) in chunk {
                    case = case.case(Expr::col(groups::Column::Id).eq(*id), Expr::val(guid.to_string()));
                }
                let update = Query::update()
                    .table(groups::Entity)
                    .value(groups::Column::Guid, case)
                    .value(groups::Column::Kind, "app")
                    .and_where(Expr::col(groups::Column::Id).is_in(chunk.iter().map(|(id, _)| *id)))
                    .to_owned();
                txn.execute(&update).await?;
                ids.extend(chunk.iter().map(|(id, guid)| (guid.to_string(), *id)));
            }
        }

        let wanted: BTreeSet<(i32, i32, i32, &'static str)> = policies
            .iter()
            .map(|p| (ids[&p.destination], i32::from(p.start), i32::from(p.end), p.protocol.as_str()))
            .collect();
        let rows: Vec<_> = wanted.iter().collect();
        for chunk in rows.chunks(CHUNK) {
            let mut insert = Query::insert();
            insert
                .into_table(destinations::Entity)
                .columns([
                    destinations::Column::GroupId,
                    destinations::Column::Port,
                    destinations::Column::Protocol,
                    destinations::Column::StartPort,
                    destinations::Column::EndPort,
                ])
                .on_conflict(
                    OnConflict::columns([
                        destinations::Column::GroupId,
                        destinations::Column::StartPort,
                        destinations::Column::EndPort,
                        destinations::Column::Protocol,
                    ])
                    .do_nothing_on([destinations::Column::Id])
                    .to_owned(),
                );
            for (group, start, end, protocol) in chunk {
                let port = if start == end { *start } else { 0 };
                insert.values_panic([(*group).into(), port.into(), (*protocol).into(), (*start).into(), (*end).into()]);
            }
            txn.execute(&insert).await?;
        }
        let dest_groups: BTreeSet<i32> = wanted.iter().map(|w| w.0).collect();
        let dest_ids = destination_ids(txn, &dest_groups).await?;

        let by_pair: BTreeMap<(i32, i32), &Policy> = policies
            .iter()
            .map(|p| {
                let key = (ids[&p.destination], i32::from(p.start), i32::from(p.end), p.protocol.as_str().to_string());
                ((ids[&p.source], dest_ids[&key]), p)
            })
            .collect();
        let pairs: Vec<(i32, i32)> = by_pair.keys().copied().collect();
        for chunk in pairs.chunks(CHUNK) {
            let mut insert = Query::insert();
            insert
                .into_table(policies::Entity)
                .columns([policies::Column::GroupId, policies::Column::DestinationId])
                .on_conflict(
                    OnConflict::columns([policies::Column::GroupId, policies::Column::DestinationId])
                        .do_nothing_on([policies::Column::Id])
                        .to_owned(),
                );
            for (group, dest) in chunk {
                insert.values_panic([(*group).into(), (*dest).into()]);
            }
            txn.execute(&insert).await?;
        }
        Ok(by_pair
            .values()
            .map(|p| TaggedPolicy {
                policy: (*p).clone(),
                source_tag: format_tag(i64::from(ids[&p.source]), self.tag_length),
                destination_tag: format_tag(i64::from(ids[&p.destination]), self.tag_length),
            })
            .collect())
    }

    /// Policies matching `filter`, with tags, in creation order.
    pub async fn list(&self, filter: &PolicyFilter) -> Result<Vec<TaggedPolicy>, StoreError> {
        let started = Instant::now();
        let result = self.list_inner(filter).await;
        record("list", started, &result);
        result
    }

    async fn list_inner(&self, filter: &PolicyFilter) -> Result<Vec<TaggedPolicy>, StoreError> {
        // Policies joined with their destinations only; group guids come from a second, small
        // query. Joining `groups` twice made the database hash the whole 65,535-row tag pool
        // twice per listing.
        let (d, p) = (Alias::new("d"), Alias::new("p"));
        let mut stmt = Query::select();
        stmt.column((p.clone(), policies::Column::GroupId))
            .column((d.clone(), destinations::Column::GroupId))
            .column((d.clone(), destinations::Column::Protocol))
            .column((d.clone(), destinations::Column::StartPort))
            .column((d.clone(), destinations::Column::EndPort))
            .from_as(policies::Entity, p.clone())
            .join_as(
                JoinType::InnerJoin,
                destinations::Entity,
                d.clone(),
                Expr::col((d.clone(), destinations::Column::Id)).equals((p.clone(), policies::Column::DestinationId)),
            )
            .order_by((p.clone(), policies::Column::Id), Order::Asc);
        // Guids are resolved to group ids first, so the filter compares indexed integer
        // columns (PostgreSQL then uses the indexes for the OR as well). Very long id lists
        // would exceed bind limits; those are filtered in memory instead.
        let small = |l: &Vec<String>| l.len() <= 5_000;
        let src = Expr::col((p.clone(), policies::Column::GroupId));
        let dst = Expr::col((d.clone(), destinations::Column::GroupId));
        let mut filter_in_memory = false;
        match filter {
            PolicyFilter::All => {}
            PolicyFilter::Any(ids) if small(ids) => {
                let ids = self.group_ids_of(ids).await?;
                stmt.cond_where(Condition::any().add(src.is_in(ids.clone())).add(dst.is_in(ids)));
            }
            PolicyFilter::Source(ids) if small(ids) => {
                stmt.and_where(src.is_in(self.group_ids_of(ids).await?));
            }
            PolicyFilter::Destination(ids) if small(ids) => {
                stmt.and_where(dst.is_in(self.group_ids_of(ids).await?));
            }
            PolicyFilter::SourceAndDestination(s, d) if small(s) && small(d) => {
                stmt.and_where(src.is_in(self.group_ids_of(s).await?))
                    .and_where(dst.is_in(self.group_ids_of(d).await?));
            }
            _ => filter_in_memory = true,
        }
        let rows = self.db.query_all(&stmt).await?;
        let mut raw = Vec::with_capacity(rows.len());
        for row in rows {
            raw.push((
                row.try_get_by_index::<i32>(0)?,
                row.try_get_by_index::<i32>(1)?,
                row.try_get_by_index::<String>(2)?,
                row.try_get_by_index::<i32>(3)?,
                row.try_get_by_index::<i32>(4)?,
            ));
        }
        let guids = if matches!(filter, PolicyFilter::All) || filter_in_memory {
            self.allocated_groups(None).await?
        } else {
            let used: BTreeSet<i32> = raw.iter().flat_map(|r| [r.0, r.1]).collect();
            self.allocated_groups(Some(used.into_iter().collect())).await?
        };
        let mut out = Vec::with_capacity(raw.len());
        for (src, dst, protocol, start, end) in raw {
            let (Some(protocol), Some(source), Some(destination)) =
                (Protocol::parse(&protocol), guids.get(&src), guids.get(&dst))
            else {
                continue;
            };
            let policy = Policy {
                source: source.clone(),
                destination: destination.clone(),
                protocol,
                start: u16::try_from(start).unwrap_or(0),
                end: u16::try_from(end).unwrap_or(0),
            };
            if filter_in_memory && !filter.matches(&policy) {
                continue;
            }
            out.push(TaggedPolicy {
                source_tag: format_tag(i64::from(src), self.tag_length),
                destination_tag: format_tag(i64::from(dst), self.tag_length),
                policy,
            });
        }
        Ok(out)
    }

    /// Guids of allocated groups: all of them, or those with the given ids.
    async fn allocated_groups(&self, ids: Option<Vec<i32>>) -> Result<HashMap<i32, String>, StoreError> {
        let query = |cond: sea_orm::sea_query::SimpleExpr| {
            Query::select()
                .columns([groups::Column::Id, groups::Column::Guid])
                .from(groups::Entity)
                .and_where(cond)
                .to_owned()
        };
        let statements = match ids {
            None => vec![query(Expr::col(groups::Column::Guid).is_not_null())],
            Some(ids) => {
                ids.chunks(CHUNK).map(|c| query(Expr::col(groups::Column::Id).is_in(c.iter().copied()))).collect()
            }
        };
        let mut out = HashMap::new();
        for stmt in statements {
            for row in self.db.query_all(&stmt).await? {
                if let Some(guid) = row.try_get_by_index::<Option<String>>(1)? {
                    out.insert(row.try_get_by_index::<i32>(0)?, guid);
                }
            }
        }
        Ok(out)
    }

    /// Group ids of the given guids (unknown guids are left out).
    async fn group_ids_of(&self, guids: &[String]) -> Result<Vec<i32>, StoreError> {
        let mut out = Vec::new();
        for chunk in guids.chunks(CHUNK) {
            let stmt = Query::select()
                .column(groups::Column::Id)
                .from(groups::Entity)
                .and_where(Expr::col(groups::Column::Guid).is_in(chunk.iter().cloned()))
                .to_owned();
            for row in self.db.query_all(&stmt).await? {
                out.push(row.try_get_by_index::<i32>(0)?);
            }
        }
        Ok(out)
    }

    /// Every allocated tag, ordered by tag.
    pub async fn tags(&self) -> Result<Vec<Tag>, StoreError> {
        let started = Instant::now();
        let stmt = Query::select()
            .columns([groups::Column::Id, groups::Column::Guid, groups::Column::Kind])
            .from(groups::Entity)
            .and_where(Expr::col(groups::Column::Guid).is_not_null())
            .order_by(groups::Column::Id, Order::Asc)
            .to_owned();
        let result = async {
            let rows = self.db.query_all(&stmt).await?;
            rows.iter()
                .map(|r| {
                    Ok(Tag {
                        tag: format_tag(i64::from(r.try_get_by_index::<i32>(0)?), self.tag_length),
                        id: r.try_get_by_index::<Option<String>>(1)?.unwrap_or_default(),
                        kind: r.try_get_by_index::<Option<String>>(2)?.unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        }
        .await;
        record("tags", started, &result);
        result
    }

    /// Number of policies per source app, for the apps given.
    pub async fn count_by_source(&self, apps: &[String]) -> Result<HashMap<String, u64>, StoreError> {
        let started = Instant::now();
        let result = async {
            let mut counts = HashMap::new();
            for chunk in apps.chunks(CHUNK) {
                let sg = Alias::new("sg");
                let stmt = Query::select()
                    .column((sg.clone(), groups::Column::Guid))
                    .expr(Expr::col((policies::Entity, policies::Column::Id)).count())
                    .from(policies::Entity)
                    .join_as(
                        JoinType::InnerJoin,
                        groups::Entity,
                        sg.clone(),
                        Expr::col((sg.clone(), groups::Column::Id))
                            .equals((policies::Entity, policies::Column::GroupId)),
                    )
                    .and_where(Expr::col((sg.clone(), groups::Column::Guid)).is_in(chunk.iter().cloned()))
                    .group_by_col((sg.clone(), groups::Column::Guid))
                    .to_owned();
                for row in self.db.query_all(&stmt).await? {
                    let guid: Option<String> = row.try_get_by_index(0)?;
                    let n: i64 = row.try_get_by_index(1)?;
                    if let Some(guid) = guid {
                        counts.insert(guid, Ord::max(n, 0) as u64);
                    }
                }
            }
            Ok(counts)
        }
        .await;
        record("count_by_source", started, &result);
        result
    }

    /// The write version and the time of the last write (Unix nanoseconds).
    pub async fn version(&self) -> Result<(i64, i64), StoreError> {
        version_in(&self.db).await
    }
}

/// What a committed policy write changed, so the in-memory snapshot can follow it without
/// reading every policy back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The write version this transaction produced (the one before it plus one).
    pub version: i64,
    pub last_updated_ns: i64,
    pub change: PolicyChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    /// The policies asked for with their tags, in row order (some may have existed).
    Created(Vec<TaggedPolicy>),
    /// The policies asked to be deleted (some may not have existed).
    Deleted(Vec<Policy>),
}

async fn version_in<C: ConnectionTrait>(db: &C) -> Result<(i64, i64), StoreError> {
    let stmt = Query::select()
        .columns([policies_info::Column::Version, policies_info::Column::LastUpdatedNs])
        .from(policies_info::Entity)
        .and_where(Expr::col(policies_info::Column::Id).eq(1))
        .to_owned();
    match db.query_one(&stmt).await? {
        Some(r) => Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)),
        None => Ok((0, 0)),
    }
}

async fn bump(txn: &DatabaseTransaction) -> Result<(), StoreError> {
    let update = Query::update()
        .table(policies_info::Entity)
        .value(policies_info::Column::Version, Expr::col(policies_info::Column::Version).add(1))
        .value(policies_info::Column::LastUpdatedNs, now_ns())
        .and_where(Expr::col(policies_info::Column::Id).eq(1))
        .to_owned();
    txn.execute(&update).await?;
    Ok(())
}

/// Group ids of the given guids. With `app_only`, a group of another type is a conflict.
async fn group_ids(
    txn: &DatabaseTransaction,
    guids: &[&str],
    app_only: bool,
) -> Result<HashMap<String, i32>, StoreError> {
    let mut out = HashMap::new();
    for chunk in guids.chunks(CHUNK) {
        let stmt = Query::select()
            .columns([groups::Column::Id, groups::Column::Guid, groups::Column::Kind])
            .from(groups::Entity)
            .and_where(Expr::col(groups::Column::Guid).is_in(chunk.iter().map(|g| g.to_string())))
            .to_owned();
        for row in txn.query_all(&stmt).await? {
            let id: i32 = row.try_get_by_index(0)?;
            let guid: Option<String> = row.try_get_by_index(1)?;
            let kind: Option<String> = row.try_get_by_index(2)?;
            let Some(guid) = guid else { continue };
            if app_only && kind.as_deref() != Some("app") {
                return Err(StoreError::TypeConflict { guid, kind: kind.unwrap_or_default() });
            }
            out.insert(guid, id);
        }
    }
    Ok(out)
}

type DestinationKey = (i32, i32, i32, String);

/// Destination rows of the given groups, keyed by (group, start, end, protocol).
async fn destination_ids(
    txn: &DatabaseTransaction,
    groups: &BTreeSet<i32>,
) -> Result<HashMap<DestinationKey, i32>, StoreError> {
    let mut out = HashMap::new();
    let groups: Vec<i32> = groups.iter().copied().collect();
    for chunk in groups.chunks(CHUNK) {
        let stmt = Query::select()
            .columns([
                destinations::Column::Id,
                destinations::Column::GroupId,
                destinations::Column::StartPort,
                destinations::Column::EndPort,
                destinations::Column::Protocol,
            ])
            .from(destinations::Entity)
            .and_where(Expr::col(destinations::Column::GroupId).is_in(chunk.iter().copied()))
            .to_owned();
        for row in txn.query_all(&stmt).await? {
            let key = (
                row.try_get_by_index::<i32>(1)?,
                row.try_get_by_index::<i32>(2)?,
                row.try_get_by_index::<i32>(3)?,
                row.try_get_by_index::<String>(4)?,
            );
            out.insert(key, row.try_get_by_index::<i32>(0)?);
        }
    }
    Ok(out)
}

async fn delete_in(txn: &DatabaseTransaction, policies: &[Policy]) -> Result<(), StoreError> {
    let guids: Vec<&str> = policies
        .iter()
        .flat_map(|p| [p.source.as_str(), p.destination.as_str()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ids = group_ids(txn, &guids, false).await?;
    let dest_groups: BTreeSet<i32> = policies.iter().filter_map(|p| ids.get(&p.destination).copied()).collect();
    let dest_ids = destination_ids(txn, &dest_groups).await?;

    let mut pairs: BTreeSet<(i32, i32)> = BTreeSet::new();
    let mut touched_groups: BTreeSet<i32> = BTreeSet::new();
    let mut touched_dests: BTreeSet<i32> = BTreeSet::new();
    for p in policies {
        let (Some(src), Some(dst)) = (ids.get(&p.source), ids.get(&p.destination)) else {
            continue;
        };
        let key = (*dst, i32::from(p.start), i32::from(p.end), p.protocol.as_str().to_string());
        let Some(dest) = dest_ids.get(&key) else {
            continue;
        };
        pairs.insert((*src, *dest));
        touched_groups.extend([*src, *dst]);
        touched_dests.insert(*dest);
    }
    if pairs.is_empty() {
        return Ok(());
    }
    let pairs: Vec<_> = pairs.into_iter().collect();
    for chunk in pairs.chunks(CHUNK / 2) {
        let mut any = Condition::any();
        for (group, dest) in chunk {
            any = any.add(
                Condition::all()
                    .add(Expr::col(policies::Column::GroupId).eq(*group))
                    .add(Expr::col(policies::Column::DestinationId).eq(*dest)),
            );
        }
        let delete = Query::delete().from_table(policies::Entity).cond_where(any).to_owned();
        txn.execute(&delete).await?;
    }

    let touched_dests: Vec<i32> = touched_dests.into_iter().collect();
    let still_used = referenced(txn, policies::Column::DestinationId, policies::Entity, &touched_dests).await?;
    let orphans: Vec<i32> = touched_dests.into_iter().filter(|d| !still_used.contains(d)).collect();
    for chunk in orphans.chunks(CHUNK) {
        let delete = Query::delete()
            .from_table(destinations::Entity)
            .and_where(Expr::col(destinations::Column::Id).is_in(chunk.iter().copied()))
            .to_owned();
        txn.execute(&delete).await?;
    }

    let touched_groups: Vec<i32> = touched_groups.into_iter().collect();
    let mut used = referenced(txn, policies::Column::GroupId, policies::Entity, &touched_groups).await?;
    used.extend(referenced(txn, destinations::Column::GroupId, destinations::Entity, &touched_groups).await?);
    let free: Vec<i32> = touched_groups.into_iter().filter(|g| !used.contains(g)).collect();
    for chunk in free.chunks(CHUNK) {
        let update = Query::update()
            .table(groups::Entity)
            .value(groups::Column::Guid, Option::<String>::None)
            .value(groups::Column::Kind, Option::<String>::None)
            .and_where(Expr::col(groups::Column::Id).is_in(chunk.iter().copied()))
            .and_where(Expr::col(groups::Column::Kind).eq("app"))
            .to_owned();
        txn.execute(&update).await?;
    }
    Ok(())
}

/// Which of `ids` appear in `column` of `table`.
async fn referenced<C, T>(
    txn: &DatabaseTransaction,
    column: C,
    table: T,
    ids: &[i32],
) -> Result<HashSet<i32>, StoreError>
where
    C: sea_orm::sea_query::IntoIden + Copy + 'static,
    T: sea_orm::sea_query::IntoTableRef + Copy + 'static,
{
    let mut out = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let stmt = Query::select()
            .distinct()
            .column(column)
            .from(table)
            .and_where(Expr::col(column).is_in(chunk.iter().copied()))
            .to_owned();
        for row in txn.query_all(&stmt).await? {
            out.insert(row.try_get_by_index::<i32>(0)?);
        }
    }
    Ok(out)
}

/// Summary counts for metrics and logs.
pub fn count_sources(policies: &[Policy]) -> BTreeMap<&str, u64> {
    let mut counts = BTreeMap::new();
    for p in policies {
        *counts.entry(p.source.as_str()).or_insert(0) += 1;
    }
    counts
}
