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
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
