//! Policy enforcement: the desired ruleset as data (`plan`), and the kernel backends that
//! install it (`nftables`).

pub mod nftables;
pub mod plan;
