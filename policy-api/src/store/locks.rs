//! Leases on named jobs (`asg-syncer`, `policy-cleanup`), so that one replica at a time runs
//! them.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};

use super::entities::sync_locks;
use super::{Store, StoreError, now_secs};

impl Store {
    /// Takes or renews the lock `name` for `holder` until `ttl` from now. True when held.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_secs();
        // Locks are rows; a lock newer than the migrations gets its row on first use.
        let insert = Query::insert()
            .into_table(sync_locks::Entity)
            .columns([sync_locks::Column::Name, sync_locks::Column::Holder, sync_locks::Column::ExpiresAt])
            .values_panic([name.into(), "".into(), 0i64.into()])
            .on_conflict(
                OnConflict::column(sync_locks::Column::Name).do_nothing_on([sync_locks::Column::Name]).to_owned(),
            )
            .to_owned();
        self.db.execute(&insert).await?;
        let update = Query::update()
            .table(sync_locks::Entity)
            .value(sync_locks::Column::Holder, holder)
            .value(sync_locks::Column::ExpiresAt, now + ttl.as_secs() as i64)
            .and_where(Expr::col(sync_locks::Column::Name).eq(name))
            .and_where(
                Expr::col(sync_locks::Column::Holder).eq(holder).or(Expr::col(sync_locks::Column::ExpiresAt).lt(now)),
            )
            .to_owned();
        Ok(self.db.execute(&update).await?.rows_affected() == 1)
    }
}
