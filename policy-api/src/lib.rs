//! c2c policy server: Cloud Foundry's network policy API (external, UAA-authenticated), its
//! store and its background work, as an embeddable library. `policy-server` is a thin binary
//! around [`server::Server`].

pub mod answers;
pub mod api;
pub mod asgs;
pub mod auth;
pub mod authz;
pub mod cell_identity;
pub mod cleanup;
pub mod cloud_controller;
pub mod config;
pub mod database_url;
#[cfg(feature = "dev")]
pub mod dev;
pub mod discovery;
pub mod gojson;
pub mod ids;
pub mod jobs;
pub mod leases;
pub mod listener;
pub mod mapper;
pub mod policy;
pub mod policy_set;
pub mod quota;
pub mod route_emitter;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod tag_budget;
pub mod tls;
pub mod uptime;
pub mod watchers;
pub mod write_batch;

pub use api::router;
pub use config::Config;
pub use server::Server;
pub use state::AppState;
