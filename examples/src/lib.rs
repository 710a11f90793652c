//! Runnable examples of c2c: the local demo of the whole system (`src/bin/demo.rs`, on the
//! system-test harness), and scripting with the generated client (`src/bin/policy-sync.rs`,
//! on [`policy_file`]).

pub mod policy_file;
