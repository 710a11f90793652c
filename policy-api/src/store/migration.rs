//! Schema migrations, run at start-up under a database-wide lock (see `Store::migrate`).

use sea_orm_migration::prelude::*;

use super::entities::{destinations, groups, policies, policies_info};

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(M0001Policies)]
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
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("policies_destination_id_idx")
                    .table(policies::Entity)
                    .col(policies::Column::DestinationId)
                    .to_owned(),
            )
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
