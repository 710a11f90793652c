//! The one harness of c2c's system tests, the local demo and the system benchmarks.
//!
//! Everything runs on the real kernel in throwaway network namespaces (root needed): an
//! underlay "switch" ([`lab::fabric`]), a control plane ([`control_plane::ControlPlane`],
//! `policy-server` with the UAA and Cloud Controller test doubles), cells running netagent
//! ([`cell::CellAgent`]), containers wired through the real `c2c-cni` binary ([`cni`]) and
//! probes that send real TCP and UDP ([`probes`]). Nothing here waits a fixed time for
//! something to be ready: servers report that they are bound, agents that they started,
//! and conditions are polled until they hold ([`lab::eventually`]).

pub mod bins;
pub mod cell;
pub mod cni;
pub mod control_plane;
pub mod cpu;
pub mod lab;
pub mod nats;
pub mod probes;
pub mod process;
pub mod scratch;
pub mod world;
