//! Leases on named jobs (`asg-syncer`), so that one replica at a time runs them.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait, Query};

use super::entities::sync_locks;
use super::{Store, StoreError, now_secs};

impl Store {
    /// Takes or renews the lock `name` for `holder` until `ttl` from now. True when held.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_secs();
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
