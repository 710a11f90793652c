//! Tables, as SeaORM entities. The layout follows upstream's (`groups`, `destinations`,
//! `policies`, `policies_info`) so operators recognise it; `policies_info` carries a version
//! counter instead of a timestamp column.

pub mod groups {
    use sea_orm::entity::prelude::*;

    /// One row per possible tag; `id` is the tag. `guid` NULL means the tag is free.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "groups")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        #[sea_orm(unique)]
        pub guid: Option<String>,
        #[sea_orm(column_name = "type")]
        pub kind: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod destinations {
    use sea_orm::entity::prelude::*;

    /// A destination app with a protocol and port range; shared by every policy to it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "destinations")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub group_id: i32,
        /// Upstream's legacy single port: the port when start == end, else 0.
        pub port: i32,
        pub protocol: String,
        pub start_port: i32,
        pub end_port: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod policies {
    use sea_orm::entity::prelude::*;

    /// Source group → destination row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "policies")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub group_id: i32,
        pub destination_id: i32,
        /// The write version that created the row (see `policy_deletions`); NULL for rows
        /// older than the change log.
        pub created_version: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod policies_info {
    use sea_orm::entity::prelude::*;

    /// One row. Every policy write bumps `version` and sets `last_updated_ns` in its own
    /// transaction; the row lock also serialises writers, which keeps tag allocation simple.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "policies_info")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub version: i64,
        pub last_updated_ns: i64,
        /// Writes that recorded their change (`policies.created_version`,
        /// `policy_deletions`), bumped with `version`: while both moved alike, a replica can
        /// follow by reading only the changes.
        pub logged_writes: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod policy_deletions {
    use sea_orm::entity::prelude::*;

    /// A policy a write deleted, kept for [`crate::store::KEEP_VERSIONS`] versions so that
    /// other replicas can follow deletes without reading every policy.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "policy_deletions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub version: i64,
        pub source_guid: String,
        pub destination_guid: String,
        pub protocol: String,
        pub start_port: i32,
        pub end_port: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod security_groups {
    use sea_orm::entity::prelude::*;

    /// An application security group mirrored from Cloud Controller. `rules` is the JSON
    /// array of rules as text; the space lists are JSON arrays of space GUIDs as text.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "security_groups")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub guid: String,
        pub name: String,
        pub rules: String,
        pub staging_default: bool,
        pub running_default: bool,
        pub staging_spaces: String,
        pub running_spaces: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod subnets {
    use sea_orm::entity::prelude::*;

    /// A cell's overlay subnet lease, as silk-controller keeps them.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "subnets")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        pub underlay_ip: String,
        #[sea_orm(unique)]
        pub overlay_subnet: String,
        #[sea_orm(unique)]
        pub overlay_hwaddr: String,
        /// Unix seconds.
        pub last_renewed_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod registrations {
    use sea_orm::entity::prelude::*;

    /// One internal route of one container, registered by its cell.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "registrations")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub cell: String,
        pub hostname: String,
        pub ip: String,
        /// Unix seconds after which the registration no longer counts.
        pub expires_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod change_versions {
    use sea_orm::entity::prelude::*;

    /// Version counters of data other than policies (`asgs`, `discovery`), bumped in the
    /// transaction that changes it; replicas compare them to know when to reload.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "change_versions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod sync_locks {
    use sea_orm::entity::prelude::*;

    /// A lease on a background job, so one replica runs it at a time.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sync_locks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub holder: String,
        /// Unix seconds.
        pub expires_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
