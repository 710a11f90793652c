//! Service-discovery registrations: each cell's hostnames and addresses, valid until they
//! expire unless the cell refreshes them.

use std::collections::BTreeSet;
use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, FromQueryResult, TransactionTrait};

use super::entities::registrations;
use super::versions::bump_change;
use super::{Store, StoreError, fetch, now_secs};
use crate::discovery::{Registration, normalize};

#[derive(FromQueryResult)]
struct StoredRow {
    hostname: String,
    ip: String,
    expires_at: i64,
}

#[derive(FromQueryResult)]
struct LiveRow {
    hostname: String,
    ip: String,
}

fn registration_key(hostname: &str, ip: &str) -> (String, String) {
    (normalize(hostname), ip.to_string())
}

impl Store {
    /// Replaces the registrations of `cell`, valid for `ttl`; bumps the discovery version
    /// only when the visible set changed.
    pub async fn register_cell(&self, cell: &str, regs: &[Registration], ttl: Duration) -> Result<(), StoreError> {
        use registrations::Column as C;
        let wanted: BTreeSet<(String, String)> = regs.iter().map(|r| registration_key(&r.hostname, &r.ip)).collect();
        self.retrying("register_cell", || async {
            let now = now_secs();
            let txn = self.db.begin().await?;
            let stmt = Query::select()
                .columns([C::Hostname, C::Ip, C::ExpiresAt])
                .from(registrations::Entity)
                .and_where(Expr::col(C::Cell).eq(cell))
                .to_owned();
            let mut visible = BTreeSet::new();
            let mut stored = BTreeSet::new();
            for row in fetch::<StoredRow, _>(&txn, &stmt).await? {
                let key = (row.hostname, row.ip);
                if row.expires_at >= now {
                    visible.insert(key.clone());
                }
                stored.insert(key);
            }
            let stale: Vec<&(String, String)> = stored.difference(&wanted).collect();
            for chunk in stale.chunks(200) {
                let mut any = sea_orm::sea_query::Condition::any();
                for (h, ip) in chunk {
                    any = any.add(Expr::col(C::Hostname).eq(h.as_str()).and(Expr::col(C::Ip).eq(ip.as_str())));
                }
                let delete = Query::delete()
                    .from_table(registrations::Entity)
                    .and_where(Expr::col(C::Cell).eq(cell))
                    .cond_where(any)
                    .to_owned();
                txn.execute(&delete).await?;
            }
            let expires = now + ttl.as_secs() as i64;
            let refresh = Query::update()
                .table(registrations::Entity)
                .value(C::ExpiresAt, expires)
                .and_where(Expr::col(C::Cell).eq(cell))
                .to_owned();
            txn.execute(&refresh).await?;
            let new: Vec<&(String, String)> = wanted.difference(&stored).collect();
            for chunk in new.chunks(200) {
                let mut insert = Query::insert();
                insert.into_table(registrations::Entity).columns([C::Cell, C::Hostname, C::Ip, C::ExpiresAt]);
                for (h, ip) in chunk {
                    insert.values_panic([cell.into(), h.as_str().into(), ip.as_str().into(), expires.into()]);
                }
                txn.execute(&insert).await?;
            }
            if visible != wanted {
                bump_change(&txn, "discovery").await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// Adds `regs` under `source`, or refreshes them, valid for `ttl`, and leaves the
    /// source's other registrations as they are: CF's route-emitter registers each
    /// instance on its own (the NATS drop-in). Bumps the discovery version when a name
    /// gains an address.
    pub async fn upsert_registrations(
        &self,
        source: &str,
        regs: &[Registration],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        use registrations::Column as C;
        let keys: BTreeSet<(String, String)> = regs.iter().map(|r| registration_key(&r.hostname, &r.ip)).collect();
        self.retrying("upsert_registrations", || async {
            let now = now_secs();
            let expires = now + ttl.as_secs() as i64;
            let txn = self.db.begin().await?;
            let mut changed = false;
            for (h, ip) in &keys {
                let row = |c: C| Expr::col(c);
                let this =
                    || row(C::Cell).eq(source).and(row(C::Hostname).eq(h.as_str())).and(row(C::Ip).eq(ip.as_str()));
                // A row that had expired but was not pruned yet becomes visible again.
                let revived = Query::update()
                    .table(registrations::Entity)
                    .value(C::ExpiresAt, expires)
                    .cond_where(this().and(row(C::ExpiresAt).lt(now)))
                    .to_owned();
                changed |= txn.execute(&revived).await?.rows_affected() > 0;
                let refresh = Query::update()
                    .table(registrations::Entity)
                    .value(C::ExpiresAt, expires)
                    .cond_where(this())
                    .to_owned();
                if txn.execute(&refresh).await?.rows_affected() == 0 {
                    let insert = Query::insert()
                        .into_table(registrations::Entity)
                        .columns([C::Cell, C::Hostname, C::Ip, C::ExpiresAt])
                        .values_panic([source.into(), h.as_str().into(), ip.as_str().into(), expires.into()])
                        .to_owned();
                    txn.execute(&insert).await?;
                    changed = true;
                }
            }
            if changed {
                bump_change(&txn, "discovery").await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// Removes `regs` from `source`'s registrations.
    pub async fn remove_registrations(&self, source: &str, regs: &[Registration]) -> Result<(), StoreError> {
        use registrations::Column as C;
        let keys: BTreeSet<(String, String)> = regs.iter().map(|r| registration_key(&r.hostname, &r.ip)).collect();
        self.retrying("remove_registrations", || async {
            let txn = self.db.begin().await?;
            let mut removed = 0;
            for (h, ip) in &keys {
                let delete = Query::delete()
                    .from_table(registrations::Entity)
                    .and_where(Expr::col(C::Cell).eq(source))
                    .and_where(Expr::col(C::Hostname).eq(h.as_str()))
                    .and_where(Expr::col(C::Ip).eq(ip.as_str()))
                    .to_owned();
                removed += txn.execute(&delete).await?.rows_affected();
            }
            if removed > 0 {
                bump_change(&txn, "discovery").await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// Removes every registration of `cell`.
    pub async fn deregister_cell(&self, cell: &str) -> Result<(), StoreError> {
        self.register_cell(cell, &[], Duration::ZERO).await
    }

    /// Registrations that have not expired.
    pub async fn live_registrations(&self) -> Result<Vec<Registration>, StoreError> {
        use registrations::Column as C;
        let stmt = Query::select()
            .columns([C::Hostname, C::Ip])
            .from(registrations::Entity)
            .and_where(Expr::col(C::ExpiresAt).gte(now_secs()))
            .to_owned();
        let rows = fetch::<LiveRow, _>(&self.db, &stmt).await?;
        Ok(rows.into_iter().map(|r| Registration { hostname: r.hostname, ip: r.ip }).collect())
    }

    /// Deletes expired registrations; bumps the discovery version if any were deleted.
    pub async fn prune_registrations(&self) -> Result<u64, StoreError> {
        self.retrying("prune_registrations", || async {
            let txn = self.db.begin().await?;
            let delete = Query::delete()
                .from_table(registrations::Entity)
                .and_where(Expr::col(registrations::Column::ExpiresAt).lt(now_secs()))
                .to_owned();
            let n = txn.execute(&delete).await?.rows_affected();
            if n > 0 {
                bump_change(&txn, "discovery").await?;
            }
            txn.commit().await?;
            Ok(n)
        })
        .await
    }
}
