//! The c2c cf CLI plugin: the cf plugin protocol (Go `net/rpc` over gob) and the network
//! policy commands.

pub mod cf_config;
pub mod cli_rpc;
pub mod cloud_controller;
pub mod commands;
pub mod errors;
pub mod flags;
pub mod gob;
pub mod metadata;
pub mod rpc;
pub mod table;
pub mod target;
