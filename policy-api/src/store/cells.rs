//! Store operations for the cells' side: tags for non-app groups, ASGs, job locks, version
//! counters, discovery registrations and subnet leases.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, SqlErr, TransactionTrait};

use super::entities::{change_versions, groups, policies_info, registrations, security_groups, subnets, sync_locks};
use super::{Store, StoreError, Tag};
use crate::asgs::SecurityGroup;
use crate::discovery::{Registration, normalize};
use crate::leases::{Lease, Pool, hardware_addr};
use crate::policy::format_tag;

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Version counters, read together so a replica can tell what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Versions {
    pub policies: i64,
    pub last_updated_ns: i64,
    pub asgs: i64,
    pub discovery: i64,
}

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

async fn bump_change(txn: &DatabaseTransaction, name: &str) -> Result<(), StoreError> {
    let update = Query::update()
        .table(change_versions::Entity)
        .value(change_versions::Column::Version, Expr::col(change_versions::Column::Version).add(1))
        .and_where(Expr::col(change_versions::Column::Name).eq(name))
        .to_owned();
    txn.execute(&update).await?;
    Ok(())
}

fn registration_key(hostname: &str, ip: &str) -> (String, String) {
    (normalize(hostname), ip.to_string())
}

impl Store {
    /// Every version counter.
    pub async fn versions(&self) -> Result<Versions, StoreError> {
        let (policies, last_updated_ns) = self.version().await?;
        let stmt = Query::select()
            .columns([change_versions::Column::Name, change_versions::Column::Version])
            .from(change_versions::Entity)
            .to_owned();
        let mut v = Versions { policies, last_updated_ns, ..Versions::default() };
        for row in self.db.query_all(&stmt).await? {
            let name: String = row.try_get_by_index(0)?;
            let version: i64 = row.try_get_by_index(1)?;
            match name.as_str() {
                "asgs" => v.asgs = version,
                "discovery" => v.discovery = version,
                _ => {}
            }
        }
        Ok(v)
    }

    /// Upstream's `PUT internal/tags`: the tag of `(guid, kind)`, allocated if new. A guid
    /// that has a tag of another type is a conflict.
    pub async fn get_or_create_tag(&self, guid: &str, kind: &str) -> Result<Tag, StoreError> {
        self.retrying("create_tag", || async {
            let txn = self.db.begin().await?;
            // Takes the writers' row lock without changing the version: allocation must not
            // race with policy creates, but a tag alone changes no policy.
            let lock = Query::update()
                .table(policies_info::Entity)
                .value(policies_info::Column::Version, Expr::col(policies_info::Column::Version))
                .and_where(Expr::col(policies_info::Column::Id).eq(1))
                .to_owned();
            txn.execute(&lock).await?;
            let find = Query::select()
                .columns([groups::Column::Id, groups::Column::Kind])
                .from(groups::Entity)
                .and_where(Expr::col(groups::Column::Guid).eq(guid))
                .to_owned();
            let id = match txn.query_one(&find).await? {
                Some(row) => {
                    let existing: Option<String> = row.try_get_by_index(1)?;
                    if existing.as_deref() != Some(kind) {
                        return Err(StoreError::TypeConflict { guid: guid.into(), kind: existing.unwrap_or_default() });
                    }
                    row.try_get_by_index::<i32>(0)?
                }
                None => {
                    let free = Query::select()
                        .column(groups::Column::Id)
                        .from(groups::Entity)
                        .and_where(Expr::col(groups::Column::Guid).is_null())
                        .order_by(groups::Column::Id, Order::Asc)
                        .limit(1)
                        .to_owned();
                    let Some(row) = txn.query_one(&free).await? else {
                        return Err(StoreError::TagsExhausted((1usize << (8 * u32::from(self.tag_length))) - 1));
                    };
                    let id: i32 = row.try_get_by_index(0)?;
                    let claim = Query::update()
                        .table(groups::Entity)
                        .value(groups::Column::Guid, guid)
                        .value(groups::Column::Kind, kind)
                        .and_where(Expr::col(groups::Column::Id).eq(id))
                        .to_owned();
                    txn.execute(&claim).await?;
                    id
                }
            };
            txn.commit().await?;
            Ok(Tag { id: guid.to_string(), tag: format_tag(i64::from(id), self.tag_length), kind: kind.to_string() })
        })
        .await
    }

    /// Every ASG, ordered by id.
    pub async fn security_groups(&self) -> Result<Vec<SecurityGroup>, StoreError> {
        use security_groups::Column as C;
        let stmt = Query::select()
            .columns([
                C::Id,
                C::Guid,
                C::Name,
                C::Rules,
                C::StagingDefault,
                C::RunningDefault,
                C::StagingSpaces,
                C::RunningSpaces,
            ])
            .from(security_groups::Entity)
            .order_by(C::Id, Order::Asc)
            .to_owned();
        let mut out = Vec::new();
        for row in self.db.query_all(&stmt).await? {
            let list = |i: usize| -> Result<Vec<String>, StoreError> {
                let text: String = row.try_get_by_index(i)?;
                Ok(serde_json::from_str(&text).unwrap_or_default())
            };
            out.push(SecurityGroup {
                id: row.try_get_by_index(0)?,
                guid: row.try_get_by_index(1)?,
                name: row.try_get_by_index(2)?,
                rules: row.try_get_by_index(3)?,
                staging_default: row.try_get_by_index(4)?,
                running_default: row.try_get_by_index(5)?,
                staging_space_guids: list(6)?,
                running_space_guids: list(7)?,
            });
        }
        Ok(out)
    }

    /// Makes the table hold exactly `groups` (matched by guid), in one transaction; bumps the
    /// ASG version only when something changed.
    pub async fn replace_security_groups(&self, groups: &[SecurityGroup]) -> Result<(), StoreError> {
        use security_groups::Column as C;
        let current: HashMap<String, SecurityGroup> =
            self.security_groups().await?.into_iter().map(|g| (g.guid.clone(), g)).collect();
        self.retrying("replace_security_groups", || async {
            let txn = self.db.begin().await?;
            let mut changed = false;
            let wanted: HashSet<&str> = groups.iter().map(|g| g.guid.as_str()).collect();
            for g in groups {
                let values = |g: &SecurityGroup| {
                    [
                        g.name.clone().into(),
                        g.rules.clone().into(),
                        g.staging_default.into(),
                        g.running_default.into(),
                        serde_json::to_string(&g.staging_space_guids).unwrap_or_else(|_| "[]".into()).into(),
                        serde_json::to_string(&g.running_space_guids).unwrap_or_else(|_| "[]".into()).into(),
                    ]
                };
                let cols =
                    [C::Name, C::Rules, C::StagingDefault, C::RunningDefault, C::StagingSpaces, C::RunningSpaces];
                match current.get(&g.guid) {
                    Some(old) if SecurityGroup { id: old.id, ..g.clone() } == *old => {}
                    Some(_) => {
                        let mut update = Query::update();
                        update.table(security_groups::Entity).and_where(Expr::col(C::Guid).eq(g.guid.as_str()));
                        for (c, v) in cols.iter().zip(values(g)) {
                            update.value(*c, v);
                        }
                        txn.execute(&update).await?;
                        changed = true;
                    }
                    None => {
                        let mut row = vec![g.guid.clone().into()];
                        row.extend(values(g));
                        let insert = Query::insert()
                            .into_table(security_groups::Entity)
                            .columns(std::iter::once(C::Guid).chain(cols))
                            .values_panic(row)
                            .to_owned();
                        txn.execute(&insert).await?;
                        changed = true;
                    }
                }
            }
            let gone: Vec<String> = current.keys().filter(|k| !wanted.contains(k.as_str())).cloned().collect();
            if !gone.is_empty() {
                let delete = Query::delete()
                    .from_table(security_groups::Entity)
                    .and_where(Expr::col(C::Guid).is_in(gone))
                    .to_owned();
                txn.execute(&delete).await?;
                changed = true;
            }
            if changed {
                bump_change(&txn, "asgs").await?;
            }
            txn.commit().await?;
            Ok(())
        })
        .await
    }

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
            for row in txn.query_all(&stmt).await? {
                let key = (row.try_get_by_index::<String>(0)?, row.try_get_by_index::<String>(1)?);
                if row.try_get_by_index::<i64>(2)? >= now {
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
        let mut out = Vec::new();
        for row in self.db.query_all(&stmt).await? {
            out.push(Registration { hostname: row.try_get_by_index(0)?, ip: row.try_get_by_index(1)? });
        }
        Ok(out)
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

    async fn lease_rows(&self) -> Result<Vec<(Lease, i64)>, StoreError> {
        use subnets::Column as C;
        let stmt = Query::select()
            .columns([C::UnderlayIp, C::OverlaySubnet, C::OverlayHwaddr, C::LastRenewedAt])
            .from(subnets::Entity)
            .order_by(C::Id, Order::Asc)
            .to_owned();
        let mut out = Vec::new();
        for row in self.db.query_all(&stmt).await? {
            out.push((
                Lease {
                    underlay_ip: row.try_get_by_index(0)?,
                    overlay_subnet: row.try_get_by_index(1)?,
                    overlay_hardware_addr: row.try_get_by_index(2)?,
                },
                row.try_get_by_index(3)?,
            ));
        }
        Ok(out)
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
    pub async fn renew_lease(&self, lease: &Lease) -> Result<(), LeaseStoreError> {
        crate::leases::validate(lease).map_err(LeaseStoreError::Invalid)?;
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
