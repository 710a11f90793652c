//! The policy change log, so a replica follows another replica's writes by reading what they
//! changed instead of every policy.
//!
//! Every policy write (one transaction, one version) records its change where it writes
//! anyway: a created row carries the version that created it (`policies.created_version`,
//! set in the insert itself), a deleted policy leaves a row in `policy_deletions`, and the
//! version bump counts the write in `logged_writes` in the same statement. A replica at
//! version `r` that reads version `V` can follow by reading the rows of versions `r+1..=V`
//! when the log is complete for them:
//!
//! * every write since `r` was logged: `logged_writes` moved as far as `version` (a write by
//!   an older server, without the log, moves `version` alone);
//! * no deletion it needs was pruned: deletions are kept for [`KEEP_VERSIONS`] versions.
//!
//! Otherwise the replica reads every policy once, as it did at start.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use super::entities::{policies, policy_deletions};
use super::policies::{PolicyChange, PolicyRow, joined_policies};
use super::{CHUNK, Store, StoreError, Versions, fetch, record};
use crate::policy::{Policy, Protocol};

/// Versions a deletion is kept for. Replicas poll every second, so they are a handful of
/// versions behind; one that fell further behind (its database was away) reads everything.
pub const KEEP_VERSIONS: i64 = 100_000;

#[derive(FromQueryResult)]
struct CreatedRow {
    version: i64,
    source_group: i32,
    destination_group: i32,
    protocol: String,
    start_port: i32,
    end_port: i32,
}

/// Whether the log between `from` and `to` holds every change: what
/// [`Store::changes_between`] decides on, without the database.
pub fn log_covers(from: &Versions, to: &Versions) -> bool {
    let versions = to.policies - from.policies;
    (0..=KEEP_VERSIONS).contains(&versions) && to.logged_writes - from.logged_writes == versions
}

/// Records the policies a delete removed, and drops deletions older than
/// [`KEEP_VERSIONS`] (an indexed range, usually empty).
pub(super) async fn record_deletions(
    txn: &DatabaseTransaction,
    version: i64,
    deleted: &[&Policy],
) -> Result<(), StoreError> {
    use policy_deletions::Column as Pd;
    for chunk in deleted.chunks(CHUNK) {
        let mut insert = Query::insert();
        insert.into_table(policy_deletions::Entity).columns([
            Pd::Version,
            Pd::SourceGuid,
            Pd::DestinationGuid,
            Pd::Protocol,
            Pd::StartPort,
            Pd::EndPort,
        ]);
        for p in chunk {
            insert.values_panic([
                version.into(),
                p.source.clone().into(),
                p.destination.clone().into(),
                p.protocol.as_str().into(),
                i32::from(p.start).into(),
                i32::from(p.end).into(),
            ]);
        }
        txn.execute(&insert).await?;
    }
    let prune = Query::delete()
        .from_table(policy_deletions::Entity)
        .and_where(Expr::col(Pd::Version).lte(version - KEEP_VERSIONS))
        .to_owned();
    txn.execute(&prune).await?;
    Ok(())
}

impl Store {
    /// The policy changes of the versions after `from` up to `to`, in version order (each
    /// write one entry), or `None` when the log does not cover them (see the module).
    /// Costs two indexed range reads and one read of the groups involved: O(what changed).
    pub async fn changes_between(
        &self,
        from: &Versions,
        to: &Versions,
    ) -> Result<Option<Vec<(i64, PolicyChange)>>, StoreError> {
        if !log_covers(from, to) {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let result = self.read_changes(from.policies, to.policies).await.map(Some);
        record("changes", started, &result);
        result
    }

    async fn read_changes(&self, after: i64, upto: i64) -> Result<Vec<(i64, PolicyChange)>, StoreError> {
        let p = Alias::new("p");
        let mut created = joined_policies();
        created
            .expr_as(Expr::col((p.clone(), policies::Column::CreatedVersion)), Alias::new("version"))
            .and_where(Expr::col((p.clone(), policies::Column::CreatedVersion)).gt(after))
            .and_where(Expr::col((p, policies::Column::CreatedVersion)).lte(upto));
        let rows = fetch::<CreatedRow, _>(&self.db, &created).await?;
        let groups: BTreeSet<i32> = rows.iter().flat_map(|r| [r.source_group, r.destination_group]).collect();
        let guids = if groups.is_empty() {
            Default::default()
        } else {
            self.allocated_groups(Some(groups.into_iter().collect())).await?
        };

        let mut by_version: BTreeMap<i64, PolicyChange> = BTreeMap::new();
        for r in rows {
            let row = PolicyRow {
                source_group: r.source_group,
                destination_group: r.destination_group,
                protocol: r.protocol,
                start_port: r.start_port,
                end_port: r.end_port,
            };
            if let Some(t) = row.tagged(&guids, self.tag_length)
                && let PolicyChange::Created(list) =
                    by_version.entry(r.version).or_insert_with(|| PolicyChange::Created(Vec::new()))
            {
                list.push(t);
            }
        }

        use policy_deletions::Column as Pd;
        let deleted = Query::select()
            .columns([Pd::Version, Pd::SourceGuid, Pd::DestinationGuid, Pd::Protocol, Pd::StartPort, Pd::EndPort])
            .columns([Pd::Id])
            .from(policy_deletions::Entity)
            .and_where(Expr::col(Pd::Version).gt(after))
            .and_where(Expr::col(Pd::Version).lte(upto))
            .order_by(Pd::Id, Order::Asc)
            .to_owned();
        for d in fetch::<policy_deletions::Model, _>(&self.db, &deleted).await? {
            let Some(protocol) = Protocol::parse(&d.protocol) else { continue };
            let policy = Policy {
                source: d.source_guid,
                destination: d.destination_guid,
                protocol,
                start: u16::try_from(d.start_port).unwrap_or(0),
                end: u16::try_from(d.end_port).unwrap_or(0),
            };
            // A write either creates or deletes, never both.
            if let PolicyChange::Deleted(list) =
                by_version.entry(d.version).or_insert_with(|| PolicyChange::Deleted(Vec::new()))
            {
                list.push(policy);
            }
        }
        Ok(by_version.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(policies: i64, logged_writes: i64) -> Versions {
        Versions { policies, logged_writes, ..Versions::default() }
    }

    #[test]
    fn the_log_covers_only_logged_and_kept_versions() {
        assert!(log_covers(&v(10, 10), &v(10, 10)), "nothing to read");
        assert!(log_covers(&v(10, 7), &v(15, 12)), "five writes, five logged");
        assert!(!log_covers(&v(10, 7), &v(15, 11)), "one write without the log");
        assert!(!log_covers(&v(10, 10), &v(9, 9)), "backwards: the database was replaced");
        assert!(log_covers(&v(0, 0), &v(KEEP_VERSIONS, KEEP_VERSIONS)));
        assert!(!log_covers(&v(0, 0), &v(KEEP_VERSIONS + 1, KEEP_VERSIONS + 1)), "deletions may be pruned");
    }
}
