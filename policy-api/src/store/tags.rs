//! Tags: the 16-bit (or 8-bit) numbers that stand for apps (and other groups) in the data
//! plane. The `groups` table is the pool: one row per tag, its guid set while allocated.

use std::collections::HashMap;
use std::time::Instant;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, FromQueryResult, TransactionTrait};

use super::entities::groups;
use super::versions::lock_writers;
use super::{CHUNK, Store, StoreError, fetch, fetch_one, record};
use crate::policy::format_tag;

/// A tag as the tags listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tag {
    pub id: String,
    pub tag: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(FromQueryResult)]
pub(super) struct IdRow {
    pub id: i32,
}

#[derive(FromQueryResult)]
struct MaxIdRow {
    max_id: Option<i32>,
}

#[derive(FromQueryResult)]
struct GroupKindRow {
    id: i32,
    guid: Option<String>,
    kind: Option<String>,
}

#[derive(FromQueryResult)]
struct GroupGuidRow {
    id: i32,
    guid: Option<String>,
}

impl Store {
    /// How many tags there are: 2^(8·tag_length) − 1.
    pub(super) fn tag_pool_size(&self) -> usize {
        (1usize << (8 * u32::from(self.tag_length))) - 1
    }

    /// Inserts the missing rows of the tag pool: ids 1..=2^(8·tag_length)−1.
    pub(super) async fn fill_tag_pool(&self) -> Result<(), StoreError> {
        let max_tag = (1i64 << (8 * u32::from(self.tag_length))) - 1;
        let stmt = Query::select()
            .expr_as(Expr::col(groups::Column::Id).max(), Alias::new("max_id"))
            .from(groups::Entity)
            .to_owned();
        let current = fetch_one::<MaxIdRow, _>(&self.db, &stmt).await?.and_then(|r| r.max_id).map_or(0, i64::from);
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

    /// Upstream's `PUT internal/tags`: the tag of `(guid, kind)`, allocated if new. A guid
    /// that has a tag of another type is a conflict.
    pub async fn get_or_create_tag(&self, guid: &str, kind: &str) -> Result<Tag, StoreError> {
        self.retrying("create_tag", || async {
            let txn = self.db.begin().await?;
            // Allocation must not race with policy creates, but a tag alone changes no policy.
            lock_writers(&txn).await?;
            // `kind` is the `type` column (upstream's name): read it under the row's name.
            let find = Query::select()
                .columns([groups::Column::Id, groups::Column::Guid])
                .expr_as(Expr::col(groups::Column::Kind), Alias::new("kind"))
                .from(groups::Entity)
                .and_where(Expr::col(groups::Column::Guid).eq(guid))
                .to_owned();
            let id = match fetch_one::<GroupKindRow, _>(&txn, &find).await? {
                Some(row) => {
                    if row.guid.as_deref() != Some(guid) {
                        let existing = row.guid.unwrap_or_default();
                        return Err(StoreError::CaseConflict { requested: guid.into(), existing });
                    }
                    if row.kind.as_deref() != Some(kind) {
                        return Err(StoreError::TypeConflict { guid: guid.into(), kind: row.kind.unwrap_or_default() });
                    }
                    row.id
                }
                None => {
                    let free = Query::select()
                        .column(groups::Column::Id)
                        .from(groups::Entity)
                        .and_where(Expr::col(groups::Column::Guid).is_null())
                        .order_by(groups::Column::Id, Order::Asc)
                        .limit(1)
                        .to_owned();
                    let Some(IdRow { id }) = fetch_one::<IdRow, _>(&txn, &free).await? else {
                        return Err(StoreError::TagsExhausted(self.tag_pool_size()));
                    };
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

    /// Guids of allocated groups: all of them, or those with the given ids.
    pub(super) async fn allocated_groups(&self, ids: Option<Vec<i32>>) -> Result<HashMap<i32, String>, StoreError> {
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
            for row in fetch::<GroupGuidRow, _>(&self.db, &stmt).await? {
                if let Some(guid) = row.guid {
                    out.insert(row.id, guid);
                }
            }
        }
        Ok(out)
    }

    /// Group ids of the given guids (unknown guids are left out).
    pub(super) async fn group_ids_of(&self, guids: &[String]) -> Result<Vec<i32>, StoreError> {
        let mut out = Vec::new();
        for chunk in guids.chunks(CHUNK) {
            let stmt = Query::select()
                .columns([groups::Column::Id, groups::Column::Guid, groups::Column::Kind])
                .from(groups::Entity)
                .and_where(Expr::col(groups::Column::Guid).is_in(chunk.iter().cloned()))
                .to_owned();
            // Exact matches only (MySQL/MariaDB would also return other cases of an id).
            let rows = fetch::<groups::Model, _>(&self.db, &stmt).await?;
            out.extend(rows.into_iter().filter(|r| r.guid.as_ref().is_some_and(|g| chunk.contains(g))).map(|r| r.id));
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
        let result = fetch::<groups::Model, _>(&self.db, &stmt).await.map(|rows| {
            rows.into_iter()
                .map(|r| Tag {
                    tag: format_tag(i64::from(r.id), self.tag_length),
                    id: r.guid.unwrap_or_default(),
                    kind: r.kind.unwrap_or_default(),
                })
                .collect()
        });
        record("tags", started, &result);
        result
    }
}

/// Group ids of the given guids. With `app_only`, a group of another type is a conflict.
pub(super) async fn group_ids(
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
        for row in fetch::<groups::Model, _>(txn, &stmt).await? {
            let Some(guid) = row.guid else { continue };
            // MySQL/MariaDB compare case-insensitively: a row may answer for another case of
            // the id. It is not that id; creating it would only collide with the row.
            if !chunk.contains(&guid.as_str()) {
                if app_only {
                    let requested = chunk.iter().find(|g| g.eq_ignore_ascii_case(&guid)).unwrap_or(&"").to_string();
                    return Err(StoreError::CaseConflict { requested, existing: guid });
                }
                continue;
            }
            if app_only && row.kind.as_deref() != Some("app") {
                return Err(StoreError::TypeConflict { guid, kind: row.kind.unwrap_or_default() });
            }
            out.insert(guid, row.id);
        }
    }
    Ok(out)
}
