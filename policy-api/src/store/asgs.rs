//! Application security groups as mirrored from Cloud Controller.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, TransactionTrait};

use super::entities::security_groups;
use super::versions::bump_change;
use super::{Store, StoreError, fetch};
use crate::asgs::SecurityGroup;

impl Store {
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
        let rows = fetch::<security_groups::Model, _>(&self.db, &stmt).await?;
        let list = |text: &str| serde_json::from_str::<Vec<String>>(text).unwrap_or_default();
        Ok(rows
            .into_iter()
            .map(|r| SecurityGroup {
                id: r.id,
                staging_space_guids: list(&r.staging_spaces),
                running_space_guids: list(&r.running_spaces),
                guid: r.guid,
                name: r.name,
                rules: r.rules,
                staging_default: r.staging_default,
                running_default: r.running_default,
            })
            .collect())
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
}
