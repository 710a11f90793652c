//! Schema migrations, run at start-up under a database-wide lock (see `Store::migrate`).

use sea_orm_migration::prelude::*;

use super::entities::{
    change_versions, destinations, groups, policies, policies_info, policy_deletions, registrations, security_groups,
    subnets, sync_locks,
};

pub struct Migrator;

/// An index on one column, created unless it exists.
fn one_column_index(name: &str, table: impl IntoTableRef, column: impl IntoIden) -> IndexCreateStatement {
    Index::create().if_not_exists().name(name).table(table).col(column).to_owned()
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(M0001Policies), Box::new(M0002CellsApi), Box::new(M0003ChangeLog)]
    }

    fn migration_table_name() -> DynIden {
        "c2c_migrations".into_iden()
    }
}

struct M0001Policies;

impl MigrationName for M0001Policies {
    fn name(&self) -> &str {
        "m0001_policies"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Policies {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(groups::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(groups::Column::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(groups::Column::Guid).string_len(255).null().unique_key())
                    .col(ColumnDef::new(groups::Column::Kind).string_len(255).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(destinations::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(destinations::Column::Id).integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(destinations::Column::GroupId).integer().not_null())
                    .col(ColumnDef::new(destinations::Column::Port).integer().not_null())
                    .col(ColumnDef::new(destinations::Column::Protocol).string_len(16).not_null())
                    .col(ColumnDef::new(destinations::Column::StartPort).integer().not_null())
                    .col(ColumnDef::new(destinations::Column::EndPort).integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("destinations_group_id_fkey")
                            .from(destinations::Entity, destinations::Column::GroupId)
                            .to(groups::Entity, groups::Column::Id),
                    )
                    .index(
                        Index::create()
                            .name("unique_destination")
                            .unique()
                            .col(destinations::Column::GroupId)
                            .col(destinations::Column::StartPort)
                            .col(destinations::Column::EndPort)
                            .col(destinations::Column::Protocol),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(policies::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(policies::Column::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(policies::Column::GroupId).integer().not_null())
                    .col(ColumnDef::new(policies::Column::DestinationId).integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("policies_group_id_fkey")
                            .from(policies::Entity, policies::Column::GroupId)
                            .to(groups::Entity, groups::Column::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("policies_destination_id_fkey")
                            .from(policies::Entity, policies::Column::DestinationId)
                            .to(destinations::Entity, destinations::Column::Id),
                    )
                    .index(
                        Index::create()
                            .name("unique_policy")
                            .unique()
                            .col(policies::Column::GroupId)
                            .col(policies::Column::DestinationId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(one_column_index(
                "policies_destination_id_idx",
                policies::Entity,
                policies::Column::DestinationId,
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(policies_info::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(policies_info::Column::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(policies_info::Column::Version).big_integer().not_null())
                    .col(ColumnDef::new(policies_info::Column::LastUpdatedNs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        let insert = Query::insert()
            .into_table(policies_info::Entity)
            .columns([policies_info::Column::Id, policies_info::Column::Version, policies_info::Column::LastUpdatedNs])
            .values_panic([1.into(), 0i64.into(), 0i64.into()])
            .to_owned();
        manager.get_connection().execute(&insert).await?;
        Ok(())
    }
}

/// Tables of the cells' side: ASGs, subnet leases, discovery registrations, job locks.
struct M0002CellsApi;

impl MigrationName for M0002CellsApi {
    fn name(&self) -> &str {
        "m0002_cells_api"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002CellsApi {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use security_groups::Column as Sg;
        manager
            .create_table(
                Table::create()
                    .table(security_groups::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(Sg::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Sg::Guid).string_len(36).not_null().unique_key())
                    .col(ColumnDef::new(Sg::Name).string_len(255).not_null())
                    .col(ColumnDef::new(Sg::Rules).text().not_null())
                    .col(ColumnDef::new(Sg::StagingDefault).boolean().not_null().default(false))
                    .col(ColumnDef::new(Sg::RunningDefault).boolean().not_null().default(false))
                    .col(ColumnDef::new(Sg::StagingSpaces).text().not_null())
                    .col(ColumnDef::new(Sg::RunningSpaces).text().not_null())
                    .to_owned(),
            )
            .await?;
        use subnets::Column as Sn;
        manager
            .create_table(
                Table::create()
                    .table(subnets::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(Sn::Id).integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Sn::UnderlayIp).string_len(64).not_null().unique_key())
                    .col(ColumnDef::new(Sn::OverlaySubnet).string_len(64).not_null().unique_key())
                    .col(ColumnDef::new(Sn::OverlayHwaddr).string_len(17).not_null().unique_key())
                    .col(ColumnDef::new(Sn::LastRenewedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        use registrations::Column as Rg;
        manager
            .create_table(
                Table::create()
                    .table(registrations::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(Rg::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Rg::Cell).string_len(255).not_null())
                    .col(ColumnDef::new(Rg::Hostname).string_len(255).not_null())
                    .col(ColumnDef::new(Rg::Ip).string_len(64).not_null())
                    .col(ColumnDef::new(Rg::ExpiresAt).big_integer().not_null())
                    .index(
                        Index::create()
                            .name("unique_registration")
                            .unique()
                            .col(Rg::Cell)
                            .col(Rg::Hostname)
                            .col(Rg::Ip),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(change_versions::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(change_versions::Column::Name).string_len(32).not_null().primary_key())
                    .col(ColumnDef::new(change_versions::Column::Version).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(sync_locks::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(sync_locks::Column::Name).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(sync_locks::Column::Holder).string_len(255).not_null())
                    .col(ColumnDef::new(sync_locks::Column::ExpiresAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        let insert = Query::insert()
            .into_table(change_versions::Entity)
            .columns([change_versions::Column::Name, change_versions::Column::Version])
            .values_panic(["asgs".into(), 0i64.into()])
            .values_panic(["discovery".into(), 0i64.into()])
            .to_owned();
        manager.get_connection().execute(&insert).await?;
        let insert = Query::insert()
            .into_table(sync_locks::Entity)
            .columns([sync_locks::Column::Name, sync_locks::Column::Holder, sync_locks::Column::ExpiresAt])
            .values_panic(["asg-syncer".into(), "".into(), 0i64.into()])
            .to_owned();
        manager.get_connection().execute(&insert).await?;
        Ok(())
    }
}

/// The policy change log: the version that created each policy row, deleted policies, and a
/// count of the writes that recorded their change. Rows from before it have no version, and
/// a write from a replica without it moves `version` alone; either way a replica that sees
/// the two counts move apart reads everything once.
struct M0003ChangeLog;

impl MigrationName for M0003ChangeLog {
    fn name(&self) -> &str {
        "m0003_change_log"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0003ChangeLog {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(policies::Entity)
                    .add_column(ColumnDef::new(policies::Column::CreatedVersion).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(one_column_index(
                "policies_created_version_idx",
                policies::Entity,
                policies::Column::CreatedVersion,
            ))
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(policies_info::Entity)
                    .add_column(ColumnDef::new(policies_info::Column::LoggedWrites).big_integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;
        use policy_deletions::Column as Pd;
        manager
            .create_table(
                Table::create()
                    .table(policy_deletions::Entity)
                    .if_not_exists()
                    .col(ColumnDef::new(Pd::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Pd::Version).big_integer().not_null())
                    .col(ColumnDef::new(Pd::SourceGuid).string_len(255).not_null())
                    .col(ColumnDef::new(Pd::DestinationGuid).string_len(255).not_null())
                    .col(ColumnDef::new(Pd::Protocol).string_len(16).not_null())
                    .col(ColumnDef::new(Pd::StartPort).integer().not_null())
                    .col(ColumnDef::new(Pd::EndPort).integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(one_column_index("policy_deletions_version_idx", policy_deletions::Entity, Pd::Version))
            .await
    }
}
