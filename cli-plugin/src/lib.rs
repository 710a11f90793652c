//! The c2c cf CLI plugin: the cf plugin protocol (Go `net/rpc` over gob) and the network
//! policy commands.

pub mod gob;
