//! Runnable examples of the whole system: the local demo (`src/bin/demo.rs`) and the
//! system benchmark (`benches/system.rs`), built on the lab in `system`.

pub mod system;
