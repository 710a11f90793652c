//! Policies: creates and deletes, each one transaction of a fixed number of batched
//! statements that first bumps the version row; listings in creation order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use sea_orm::sea_query::{
    Alias, CaseStatement, Condition, Expr, ExprTrait, JoinType, OnConflict, Order, Query, SelectStatement,
};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, TransactionTrait};

use super::changes::record_deletions;
use super::entities::{destinations, groups, policies};
use super::tags::{IdRow, group_ids};
use super::versions::{PolicyVersion, bump};
use super::{CHUNK, Store, StoreError, fetch, record};
use crate::policy::{Policy, PolicyFilter, Protocol, TaggedPolicy, format_tag};

/// A policy row joined with its destination, by group id.
#[derive(FromQueryResult)]
pub(super) struct PolicyRow {
    pub source_group: i32,
    pub destination_group: i32,
    pub protocol: String,
    pub start_port: i32,
    pub end_port: i32,
}

#[derive(FromQueryResult)]
struct SourceCountRow {
    guid: Option<String>,
    n: i64,
}

#[derive(FromQueryResult)]
struct DestinationRow {
    id: i32,
    group_id: i32,
    start_port: i32,
    end_port: i32,
    protocol: String,
}

impl Store {
    /// Creates the policies that do not exist yet, all in one transaction, within `limits`.
    /// The limits are checked after the version row is locked, so concurrent writers (on any
    /// replica) see each other's rows and together never pass them.
    pub async fn create(&self, policies: &[Policy], limits: CreateLimits) -> Result<Written, StoreError> {
        self.retrying("create", || async {
            let txn = self.db.begin().await?;
            let written = bump(&txn).await?;
            if let Some(max) = limits.max_per_source {
                let existing = count_by_source(&txn, &crate::quota::apps_to_count(policies)).await?;
                if crate::quota::exceeded(&existing, policies, max) {
                    return Err(StoreError::QuotaExceeded);
                }
            }
            let (tagged, new_tags) = self.create_in(&txn, written.version, policies, limits.max_new_tags).await?;
            txn.commit().await?;
            Ok(Written::new(written, new_tags, PolicyChange::Created(tagged)))
        })
        .await
    }

    /// Creates the policies of several requests in one transaction, each request within its
    /// own limits, checked in order as if the requests had run one after the other (a
    /// policy asked for twice counts twice towards a quota, so the batch errs on the strict
    /// side). Returns the write and, per request, the tags it allocated or why it was
    /// refused. Any other error fails the whole batch; the caller then runs the requests
    /// one by one.
    pub async fn create_batch(
        &self,
        requests: &[(Vec<Policy>, CreateLimits)],
    ) -> Result<(Written, Vec<Result<u64, StoreError>>), StoreError> {
        self.retrying("create", || async {
            let txn = self.db.begin().await?;
            let written = bump(&txn).await?;
            let limited: Vec<&Policy> =
                requests.iter().filter(|(_, l)| l.max_per_source.is_some()).flat_map(|(p, _)| p).collect();
            let mut counts = if limited.is_empty() {
                HashMap::new()
            } else {
                count_by_source(&txn, &crate::policy::apps_of(limited.iter().copied())).await?
            };
            let mut order: Vec<&str> = Vec::new();
            let mut seen: HashSet<&str> = HashSet::new();
            for p in requests.iter().flat_map(|(p, _)| p) {
                for guid in [p.source.as_str(), p.destination.as_str()] {
                    if seen.insert(guid) {
                        order.push(guid);
                    }
                }
            }
            let tagged_already = group_ids(&txn, &order, true).await?;
            let mut claimed: HashSet<&str> = HashSet::new();
            let mut outcomes = Vec::with_capacity(requests.len());
            let mut accepted: Vec<Policy> = Vec::new();
            for (policies, limits) in requests {
                if let Some(max) = limits.max_per_source
                    && crate::quota::exceeded(&counts, policies, max)
                {
                    outcomes.push(Err(StoreError::QuotaExceeded));
                    continue;
                }
                let mut new: Vec<&str> = Vec::new();
                for p in policies {
                    for guid in [p.source.as_str(), p.destination.as_str()] {
                        if !tagged_already.contains_key(guid) && !claimed.contains(guid) && !new.contains(&guid) {
                            new.push(guid);
                        }
                    }
                }
                if let Some(left) = limits.max_new_tags
                    && new.len() as u64 > left
                {
                    outcomes.push(Err(StoreError::TagBudget { wanted: new.len() as u64, left }));
                    continue;
                }
                for p in policies {
                    *counts.entry(p.source.clone()).or_insert(0) += 1;
                }
                claimed.extend(new.iter().copied());
                outcomes.push(Ok(new.len() as u64));
                accepted.extend(policies.iter().cloned());
            }
            let (tagged, new_tags) = self.create_in(&txn, written.version, &accepted, None).await?;
            txn.commit().await?;
            Ok((Written::new(written, new_tags, PolicyChange::Created(tagged)), outcomes))
        })
        .await
    }

    /// Deletes the policies that exist, all in one transaction; frees tags no policy uses.
    pub async fn delete(&self, policies: &[Policy]) -> Result<Written, StoreError> {
        self.retrying("delete", || async {
            let txn = self.db.begin().await?;
            let written = bump(&txn).await?;
            let deleted = delete_in(&txn, policies).await?;
            record_deletions(&txn, written.version, &deleted).await?;
            txn.commit().await?;
            Ok(Written::new(written, 0, PolicyChange::Deleted(policies.to_vec())))
        })
        .await
    }

    /// Returns the policies asked for with their tags, in the order their rows were
    /// inserted (those that already existed included), and how many apps got a new tag.
    async fn create_in(
        &self,
        txn: &DatabaseTransaction,
        version: i64,
        policies: &[Policy],
        max_new_tags: Option<u64>,
    ) -> Result<(Vec<TaggedPolicy>, u64), StoreError> {
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
        let new_tags = missing.len() as u64;
        if let Some(left) = max_new_tags
            && new_tags > left
        {
            return Err(StoreError::TagBudget { wanted: new_tags, left });
        }
        if !missing.is_empty() {
            let free_stmt = Query::select()
                .column(groups::Column::Id)
                .from(groups::Entity)
                .and_where(Expr::col(groups::Column::Guid).is_null())
                .order_by(groups::Column::Id, Order::Asc)
                .limit(missing.len() as u64)
                .to_owned();
            let free: Vec<i32> = fetch::<IdRow, _>(txn, &free_stmt).await?.into_iter().map(|r| r.id).collect();
            if free.len() < missing.len() {
                return Err(StoreError::TagsExhausted(self.tag_pool_size()));
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
                .columns([policies::Column::GroupId, policies::Column::DestinationId, policies::Column::CreatedVersion])
                .on_conflict(
                    OnConflict::columns([policies::Column::GroupId, policies::Column::DestinationId])
                        .do_nothing_on([policies::Column::Id])
                        .to_owned(),
                );
            for (group, dest) in chunk {
                insert.values_panic([(*group).into(), (*dest).into(), version.into()]);
            }
            txn.execute(&insert).await?;
        }
        let tagged = by_pair
            .values()
            .map(|p| TaggedPolicy {
                policy: (*p).clone(),
                source_tag: format_tag(i64::from(ids[&p.source]), self.tag_length),
                destination_tag: format_tag(i64::from(ids[&p.destination]), self.tag_length),
            })
            .collect();
        Ok((tagged, new_tags))
    }

    /// Policies matching `filter`, with tags, in creation order.
    pub async fn list(&self, filter: &PolicyFilter) -> Result<Vec<TaggedPolicy>, StoreError> {
        let started = Instant::now();
        let result = self.list_inner(filter).await;
        record("list", started, &result);
        result
    }

    async fn list_inner(&self, filter: &PolicyFilter) -> Result<Vec<TaggedPolicy>, StoreError> {
        let mut stmt = joined_policies();
        let (d, p) = (Alias::new("d"), Alias::new("p"));
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
        let raw = fetch::<PolicyRow, _>(&self.db, &stmt).await?;
        let guids = if matches!(filter, PolicyFilter::All) || filter_in_memory {
            self.allocated_groups(None).await?
        } else {
            let used: BTreeSet<i32> = raw.iter().flat_map(|r| [r.source_group, r.destination_group]).collect();
            self.allocated_groups(Some(used.into_iter().collect())).await?
        };
        Ok(raw
            .iter()
            .filter_map(|row| row.tagged(&guids, self.tag_length))
            .filter(|t| !filter_in_memory || filter.matches(&t.policy))
            .collect())
    }
}

/// [`PolicyRow`]s in creation order: policies (`p`) joined with their destinations (`d`)
/// only; group guids come from a second, small query. Joining `groups` twice made the
/// database hash the whole 65,535-row tag pool twice per listing.
pub(super) fn joined_policies() -> SelectStatement {
    let (d, p) = (Alias::new("d"), Alias::new("p"));
    Query::select()
        .expr_as(Expr::col((p.clone(), policies::Column::GroupId)), Alias::new("source_group"))
        .expr_as(Expr::col((d.clone(), destinations::Column::GroupId)), Alias::new("destination_group"))
        .expr_as(Expr::col((d.clone(), destinations::Column::Protocol)), Alias::new("protocol"))
        .expr_as(Expr::col((d.clone(), destinations::Column::StartPort)), Alias::new("start_port"))
        .expr_as(Expr::col((d.clone(), destinations::Column::EndPort)), Alias::new("end_port"))
        .from_as(policies::Entity, p.clone())
        .join_as(
            JoinType::InnerJoin,
            destinations::Entity,
            d.clone(),
            Expr::col((d, destinations::Column::Id)).equals((p.clone(), policies::Column::DestinationId)),
        )
        .order_by((p, policies::Column::Id), Order::Asc)
        .to_owned()
}

impl PolicyRow {
    /// The policy with its tags, given the guids of its groups; `None` for a row that
    /// cannot be one (a group without a guid, an unknown protocol).
    pub(super) fn tagged(&self, guids: &HashMap<i32, String>, tag_length: u8) -> Option<TaggedPolicy> {
        let (src, dst) = (self.source_group, self.destination_group);
        let (Some(protocol), Some(source), Some(destination)) =
            (Protocol::parse(&self.protocol), guids.get(&src), guids.get(&dst))
        else {
            return None;
        };
        let policy = Policy {
            source: source.clone(),
            destination: destination.clone(),
            protocol,
            start: u16::try_from(self.start_port).unwrap_or(0),
            end: u16::try_from(self.end_port).unwrap_or(0),
        };
        Some(TaggedPolicy {
            source_tag: format_tag(i64::from(src), tag_length),
            destination_tag: format_tag(i64::from(dst), tag_length),
            policy,
        })
    }
}

/// Number of policies per source app, for the apps given.
async fn count_by_source<C: ConnectionTrait>(db: &C, apps: &[String]) -> Result<HashMap<String, u64>, StoreError> {
    let mut counts = HashMap::new();
    for chunk in apps.chunks(CHUNK) {
        let sg = Alias::new("sg");
        let stmt = Query::select()
            .expr_as(Expr::col((sg.clone(), groups::Column::Guid)), Alias::new("guid"))
            .expr_as(Expr::col((policies::Entity, policies::Column::Id)).count(), Alias::new("n"))
            .from(policies::Entity)
            .join_as(
                JoinType::InnerJoin,
                groups::Entity,
                sg.clone(),
                Expr::col((sg.clone(), groups::Column::Id)).equals((policies::Entity, policies::Column::GroupId)),
            )
            .and_where(Expr::col((sg.clone(), groups::Column::Guid)).is_in(chunk.iter().cloned()))
            .group_by_col((sg.clone(), groups::Column::Guid))
            .to_owned();
        for row in fetch::<SourceCountRow, _>(db, &stmt).await? {
            if let Some(guid) = row.guid {
                counts.insert(guid, Ord::max(row.n, 0) as u64);
            }
        }
    }
    Ok(counts)
}

/// What a committed policy write changed, so the in-memory snapshot can follow it without
/// reading every policy back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The write version this transaction produced (the one before it plus one).
    pub version: i64,
    /// `logged_writes` after this write.
    pub logged_writes: i64,
    pub last_updated_ns: i64,
    /// Apps that got a tag in this write.
    pub new_tags: u64,
    pub change: PolicyChange,
}

impl Written {
    fn new(row: PolicyVersion, new_tags: u64, change: PolicyChange) -> Written {
        Written {
            version: row.version,
            logged_writes: row.logged_writes,
            last_updated_ns: row.last_updated_ns,
            new_tags,
            change,
        }
    }
}

/// Limits a create must stay within, checked inside its transaction. Admins have none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateLimits {
    /// `max_policies_per_app_source`, counted as upstream does ([`crate::quota`]).
    pub max_per_source: Option<u64>,
    /// How many apps may get a new tag.
    pub max_new_tags: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    /// The policies asked for with their tags, in row order (some may have existed).
    Created(Vec<TaggedPolicy>),
    /// The policies asked to be deleted (some may not have existed).
    Deleted(Vec<Policy>),
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
        for row in fetch::<DestinationRow, _>(txn, &stmt).await? {
            out.insert((row.group_id, row.start_port, row.end_port, row.protocol), row.id);
        }
    }
    Ok(out)
}

/// Deletes the policies that exist and returns them (each once).
async fn delete_in<'p>(txn: &DatabaseTransaction, policies: &'p [Policy]) -> Result<Vec<&'p Policy>, StoreError> {
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
    let mut deleted: Vec<&Policy> = Vec::new();
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
        if pairs.insert((*src, *dest)) {
            deleted.push(p);
        }
        touched_groups.extend([*src, *dst]);
        touched_dests.insert(*dest);
    }
    if pairs.is_empty() {
        return Ok(deleted);
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
    Ok(deleted)
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
            .expr_as(Expr::col(column), Alias::new("id"))
            .from(table)
            .and_where(Expr::col(column).is_in(chunk.iter().copied()))
            .to_owned();
        out.extend(fetch::<IdRow, _>(txn, &stmt).await?.into_iter().map(|r| r.id));
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
