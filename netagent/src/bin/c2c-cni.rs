//! `c2c-cni`: the CNI 1.0 plugin that wires containers into the c2c overlay. A container
//! runtime runs it with `CNI_COMMAND` set (ADD, DEL, CHECK, VERSION, STATUS, GC) and the
//! network configuration on stdin; the result or a CNI error goes to stdout.

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let err =
                netagent::cni::error::CniError::new(netagent::cni::error::Code::Io, "cannot start", e.to_string());
            println!("{}", err.to_json());
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(netagent::cni::plugin::run()) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json());
            ExitCode::from(1)
        }
    }
}
