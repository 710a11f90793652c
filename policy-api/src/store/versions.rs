//! The version counters every replica watches: the policies' version row (bumped first
//! in every policy write, which also serialises writers across replicas) and the change
//! counters of ASGs and discovery.

use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, FromQueryResult};

use super::entities::{change_versions, policies_info};
use super::{Store, StoreError, fetch, fetch_one};

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Version counters, read together so a replica can tell what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Versions {
    pub policies: i64,
    /// Policy writes that recorded their change (see the `changes` module).
    pub logged_writes: i64,
    pub last_updated_ns: i64,
    pub asgs: i64,
    pub discovery: i64,
}

/// The policies' version row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromQueryResult)]
pub struct PolicyVersion {
    pub version: i64,
    pub logged_writes: i64,
    /// Unix nanoseconds of the last write.
    pub last_updated_ns: i64,
}

#[derive(FromQueryResult)]
struct ChangeVersionRow {
    name: String,
    version: i64,
}

impl Store {
    /// The policies' version row.
    pub async fn version(&self) -> Result<PolicyVersion, StoreError> {
        version_in(&self.db).await
    }

    /// Every version counter.
    pub async fn versions(&self) -> Result<Versions, StoreError> {
        let PolicyVersion { version: policies, logged_writes, last_updated_ns } = self.version().await?;
        let stmt = Query::select()
            .columns([change_versions::Column::Name, change_versions::Column::Version])
            .from(change_versions::Entity)
            .to_owned();
        let mut v = Versions { policies, logged_writes, last_updated_ns, ..Versions::default() };
        for row in fetch::<ChangeVersionRow, _>(&self.db, &stmt).await? {
            match row.name.as_str() {
                "asgs" => v.asgs = row.version,
                "discovery" => v.discovery = row.version,
                _ => {}
            }
        }
        Ok(v)
    }
}

const VERSION_COLUMNS: [policies_info::Column; 3] =
    [policies_info::Column::Version, policies_info::Column::LoggedWrites, policies_info::Column::LastUpdatedNs];

pub(super) async fn version_in<C: ConnectionTrait>(db: &C) -> Result<PolicyVersion, StoreError> {
    let stmt = Query::select()
        .columns(VERSION_COLUMNS)
        .from(policies_info::Entity)
        .and_where(Expr::col(policies_info::Column::Id).eq(1))
        .to_owned();
    Ok(fetch_one::<PolicyVersion, _>(db, &stmt).await?.unwrap_or_default())
}

/// Bumps the policies' version row, the first statement of every policy write, and returns
/// what it wrote (the row stays locked by the transaction, so it is the write's). Every
/// write records its change, so it counts itself in `logged_writes` too. One round trip
/// where an update can return rows (PostgreSQL, SQLite): a single create is a short
/// transaction, and each round trip is a good part of it.
pub(super) async fn bump(txn: &DatabaseTransaction) -> Result<PolicyVersion, StoreError> {
    let mut update = Query::update()
        .table(policies_info::Entity)
        .value(policies_info::Column::Version, Expr::col(policies_info::Column::Version).add(1))
        .value(policies_info::Column::LoggedWrites, Expr::col(policies_info::Column::LoggedWrites).add(1))
        .value(policies_info::Column::LastUpdatedNs, now_ns())
        .and_where(Expr::col(policies_info::Column::Id).eq(1))
        .to_owned();
    if txn.get_database_backend() == DbBackend::MySql {
        txn.execute(&update).await?;
        return version_in(txn).await;
    }
    update.returning(Query::returning().columns(VERSION_COLUMNS));
    let row = txn.query_one(&update).await?;
    Ok(row.map(|r| PolicyVersion::from_query_result(&r, "")).transpose()?.unwrap_or_default())
}

/// Takes the writers' row lock without changing the version: for writes (a tag alone)
/// that must not race with policy creates but change no policy.
pub(super) async fn lock_writers(txn: &DatabaseTransaction) -> Result<(), StoreError> {
    let lock = Query::update()
        .table(policies_info::Entity)
        .value(policies_info::Column::Version, Expr::col(policies_info::Column::Version))
        .and_where(Expr::col(policies_info::Column::Id).eq(1))
        .to_owned();
    txn.execute(&lock).await?;
    Ok(())
}

/// Bumps the change counter `name` (`asgs`, `discovery`).
pub(super) async fn bump_change(txn: &DatabaseTransaction, name: &str) -> Result<(), StoreError> {
    let update = Query::update()
        .table(change_versions::Entity)
        .value(change_versions::Column::Version, Expr::col(change_versions::Column::Version).add(1))
        .and_where(Expr::col(change_versions::Column::Name).eq(name))
        .to_owned();
    txn.execute(&update).await?;
    Ok(())
}
