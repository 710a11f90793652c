//! Overlay subnet leases, as silk-controller keeps them: one subnet per cell, renewed by
//! the cell, given to another cell once expired when the pool is full.

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, SqlErr};

use super::entities::subnets;
use super::{Store, StoreError, fetch, now_secs};
use crate::leases::{Lease, Pool, hardware_addr};

#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("no lease available")]
    NoneAvailable,
    #[error("{0}")]
    Invalid(String),
    #[error("lease mismatch")]
    Mismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DbErr> for LeaseStoreError {
    fn from(e: DbErr) -> Self {
        LeaseStoreError::Store(StoreError::Db(e))
    }
}

#[derive(FromQueryResult)]
struct LeaseRow {
    underlay_ip: String,
    overlay_subnet: String,
    overlay_hwaddr: String,
    last_renewed_at: i64,
}

impl Store {
    async fn lease_rows(&self) -> Result<Vec<(Lease, i64)>, StoreError> {
        use subnets::Column as C;
        let stmt = Query::select()
            .columns([C::UnderlayIp, C::OverlaySubnet, C::OverlayHwaddr, C::LastRenewedAt])
            .from(subnets::Entity)
            .order_by(C::Id, Order::Asc)
            .to_owned();
        let rows = fetch::<LeaseRow, _>(&self.db, &stmt).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let lease = Lease {
                    underlay_ip: r.underlay_ip,
                    overlay_subnet: r.overlay_subnet,
                    overlay_hardware_addr: r.overlay_hwaddr,
                };
                (lease, r.last_renewed_at)
            })
            .collect())
    }

    /// Leases renewed within `expiration`.
    pub async fn active_leases(&self, expiration: Duration) -> Result<Vec<Lease>, StoreError> {
        let cutoff = now_secs() - expiration.as_secs() as i64;
        Ok(self.lease_rows().await?.into_iter().filter(|(_, t)| *t >= cutoff).map(|(l, _)| l).collect())
    }

    async fn delete_lease(&self, underlay_ip: &str) -> Result<(), StoreError> {
        let delete = Query::delete()
            .from_table(subnets::Entity)
            .and_where(Expr::col(subnets::Column::UnderlayIp).eq(underlay_ip))
            .to_owned();
        self.db.execute(&delete).await?;
        Ok(())
    }

    async fn insert_lease(&self, lease: &Lease) -> Result<(), DbErr> {
        use subnets::Column as C;
        let insert = Query::insert()
            .into_table(subnets::Entity)
            .columns([C::UnderlayIp, C::OverlaySubnet, C::OverlayHwaddr, C::LastRenewedAt])
            .values_panic([
                lease.underlay_ip.as_str().into(),
                lease.overlay_subnet.as_str().into(),
                lease.overlay_hardware_addr.as_str().into(),
                now_secs().into(),
            ])
            .to_owned();
        self.db.execute(&insert).await.map(|_| ())
    }

    /// silk-controller's acquire: the cell's existing lease if it is still in the pool, else
    /// a random free subnet, else the oldest expired one. Races between replicas end at the
    /// unique constraints and are retried.
    pub async fn acquire_lease(
        &self,
        pool: &Pool,
        underlay_ip: &str,
        single_ip: bool,
        expiration: Duration,
    ) -> Result<Lease, LeaseStoreError> {
        if underlay_ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(LeaseStoreError::Invalid(format!("invalid underlay ip {underlay_ip:?}")));
        }
        for _ in 0..10 {
            let rows = self.lease_rows().await?;
            if let Some((lease, _)) = rows.iter().find(|(l, _)| l.underlay_ip == underlay_ip) {
                if pool.contains(&lease.overlay_subnet) {
                    return Ok(lease.clone());
                }
                self.delete_lease(underlay_ip).await?;
                continue;
            }
            let taken: HashSet<String> = rows.iter().map(|(l, _)| l.overlay_subnet.clone()).collect();
            let subnet = match pool.pick_free(&taken, single_ip, rand::random()) {
                Some(s) => s,
                None => {
                    let cutoff = now_secs() - expiration.as_secs() as i64;
                    let kind = |l: &Lease| l.overlay_subnet.ends_with("/32") == single_ip;
                    let oldest = rows.iter().filter(|(l, t)| *t < cutoff && kind(l)).min_by_key(|(_, t)| *t);
                    let Some((old, _)) = oldest else { return Err(LeaseStoreError::NoneAvailable) };
                    self.delete_lease(&old.underlay_ip).await?;
                    old.overlay_subnet.clone()
                }
            };
            let Some(mac) = hardware_addr(&subnet) else { continue };
            let lease =
                Lease { underlay_ip: underlay_ip.to_string(), overlay_subnet: subnet, overlay_hardware_addr: mac };
            match self.insert_lease(&lease).await {
                Ok(()) => return Ok(lease),
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseStoreError::NoneAvailable)
    }

    /// silk-controller's renew: refreshes a lease; re-creates it if the store lost it.
    pub async fn renew_lease(&self, pool: &Pool, lease: &Lease) -> Result<(), LeaseStoreError> {
        crate::leases::validate(lease).map_err(LeaseStoreError::Invalid)?;
        // Only a subnet this pool hands out, with its own MAC: a block of the pool's size
        // on its boundary (or a single IP of the first block). Those cannot partly overlap,
        // and the store's unique subnet refuses an exact one, so a renewal cannot take a
        // piece of another cell's subnet (or re-point traffic with a foreign MAC).
        if !pool.contains(&lease.overlay_subnet) {
            return Err(LeaseStoreError::Invalid(format!(
                "{} is not a subnet of the overlay pool",
                lease.overlay_subnet
            )));
        }
        if hardware_addr(&lease.overlay_subnet).as_deref() != Some(lease.overlay_hardware_addr.as_str()) {
            return Err(LeaseStoreError::Invalid(format!(
                "{} is not the hardware address of {}",
                lease.overlay_hardware_addr, lease.overlay_subnet
            )));
        }
        let rows = self.lease_rows().await?;
        match rows.iter().find(|(l, _)| l.underlay_ip == lease.underlay_ip) {
            None => match self.insert_lease(lease).await {
                Ok(()) => Ok(()),
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    Err(LeaseStoreError::Mismatch)
                }
                Err(e) => Err(e.into()),
            },
            Some((existing, _)) if existing != lease => Err(LeaseStoreError::Mismatch),
            Some(_) => {
                let update = Query::update()
                    .table(subnets::Entity)
                    .value(subnets::Column::LastRenewedAt, now_secs())
                    .and_where(Expr::col(subnets::Column::UnderlayIp).eq(lease.underlay_ip.as_str()))
                    .to_owned();
                self.db.execute(&update).await?;
                Ok(())
            }
        }
    }

    /// silk-controller's release: deletes the cell's lease (fine if there is none).
    pub async fn release_lease(&self, underlay_ip: &str) -> Result<(), StoreError> {
        self.delete_lease(underlay_ip).await
    }
}
