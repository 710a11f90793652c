//! netagent: everything on a cell. This first part holds the pure pieces: overlay planning,
//! container addressing and naming, the container store and the CNI protocol types.

pub mod agent;
pub mod cell_state;
pub mod cni;
pub mod config;
pub mod container_net;
pub mod containers;
pub mod enforcement;
pub mod ipam;
pub mod lab;
pub mod naming;
pub mod netlink;
pub mod overlay;
pub mod sync;
