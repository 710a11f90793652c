//! netagent: everything on a cell. The daemon (`agent`) holds the cell's lease and keeps the
//! overlay (`overlay`, `netlink`) and policy enforcement (`sync`, `enforcement`) converged;
//! the CNI plugin (`cni`) wires containers (`container_net`, `ipam`, `containers`) and asks
//! the daemon to enforce before it returns. `discovery` registers the cell's internal routes
//! and answers apps.internal DNS for its containers. Pure planners compute desired state as data;
//! thin backends apply it.

pub mod agent;
pub mod asg_sync;
pub mod backoff;
pub mod cell_state;
pub mod cni;
pub mod config;
pub mod container_net;
pub mod containers;
pub mod discovery;
pub mod enforcement;
pub mod ipam;
pub mod local_api;
pub mod naming;
pub mod netlink;
pub mod overlay;
pub mod sync;
pub mod telemetry;
pub mod traffic_log;
