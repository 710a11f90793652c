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
    pub last_updated_ns: i64,
    pub asgs: i64,
    pub discovery: i64,
}

#[derive(FromQueryResult)]
struct PolicyVersionRow {
    version: i64,
    last_updated_ns: i64,
}

#[derive(FromQueryResult)]
struct ChangeVersionRow {
    name: String,
    version: i64,
}

impl Store {
    /// The write version and the time of the last write (Unix nanoseconds).
    pub async fn version(&self) -> Result<(i64, i64), StoreError> {
        version_in(&self.db).await
    }

    /// Every version counter.
    pub async fn versions(&self) -> Result<Versions, StoreError> {
        let (policies, last_updated_ns) = self.version().await?;
        let stmt = Query::select()
            .columns([change_versions::Column::Name, change_versions::Column::Version])
            .from(change_versions::Entity)
            .to_owned();
        let mut v = Versions { policies, last_updated_ns, ..Versions::default() };
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

pub(super) async fn version_in<C: ConnectionTrait>(db: &C) -> Result<(i64, i64), StoreError> {
    let stmt = Query::select()
        .columns([policies_info::Column::Version, policies_info::Column::LastUpdatedNs])
        .from(policies_info::Entity)
        .and_where(Expr::col(policies_info::Column::Id).eq(1))
        .to_owned();
    Ok(fetch_one::<PolicyVersionRow, _>(db, &stmt).await?.map_or((0, 0), |r| (r.version, r.last_updated_ns)))
}

/// Bumps the policies' version row, the first statement of every policy write, and returns
/// the version and time it wrote (the row stays locked by the transaction, so they are the
/// write's). One round trip where an update can return rows (PostgreSQL, SQLite): a single
/// create is a short transaction, and each round trip is a good part of it.
pub(super) async fn bump(txn: &DatabaseTransaction) -> Result<(i64, i64), StoreError> {
    let mut update = Query::update()
        .table(policies_info::Entity)
        .value(policies_info::Column::Version, Expr::col(policies_info::Column::Version).add(1))
        .value(policies_info::Column::LastUpdatedNs, now_ns())
        .and_where(Expr::col(policies_info::Column::Id).eq(1))
        .to_owned();
    if txn.get_database_backend() == DbBackend::MySql {
        txn.execute(&update).await?;
        return version_in(txn).await;
    }
    update
        .returning(Query::returning().columns([policies_info::Column::Version, policies_info::Column::LastUpdatedNs]));
    let row = txn.query_one(&update).await?;
    let row = row.map(|r| PolicyVersionRow::from_query_result(&r, "")).transpose()?;
    Ok(row.map_or((0, 0), |r| (r.version, r.last_updated_ns)))
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
