//! `cf-c2c`: the c2c network policy commands as a cf CLI plugin.
//!
//! Install with `cf install-plugin ./cf-c2c`, then `cf c2c-policies`, `cf c2c-add-policy`,
//! `cf c2c-remove-policy`. cf runs it as `cf-c2c <port> <command> <args...>` and answers the
//! plugin's questions (token, target) over the port.

use std::io::Write;
use std::process::ExitCode;

use cli_plugin::cli_rpc::CliRpc;
use cli_plugin::commands::{self, Ui};
use cli_plugin::errors::CommandError;
use cli_plugin::target::Target;

const NOT_STANDALONE: &str = "This cf CLI plugin is not intended to be run on its own\n";

async fn plugin(port: u16, args: &[String]) -> ExitCode {
    let rpc = CliRpc { port };
    let Some(command) = args.first() else {
        eprintln!("{NOT_STANDALONE}");
        return ExitCode::from(1);
    };
    if command == "SendMetadata" && args.len() == 1 {
        return match rpc.set_plugin_metadata(&commands::metadata()).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                println!("{e}");
                ExitCode::from(1)
            }
        };
    }
    if command == "CLI-MESSAGE-UNINSTALL" {
        return ExitCode::SUCCESS;
    }
    let Some(spec) = commands::lookup(command) else {
        eprintln!("'{command}' is not a command of this plugin.");
        return ExitCode::from(1);
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let parsed = match commands::parse(spec, &args[1..]) {
        Ok(c) => c,
        Err(e) => return usage_failure(spec, &e, &mut out, &mut err),
    };
    let target = match Target::from_rpc(&rpc).await {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            let _ = writeln!(out, "FAILED");
            return ExitCode::from(1);
        }
    };
    let mut ui = Ui { out: &mut out, err: &mut err };
    match commands::run(&parsed, &target, &mut ui).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            let _ = writeln!(out, "FAILED");
            ExitCode::from(1)
        }
    }
}

fn usage_failure(spec: &commands::Spec, e: &CommandError, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let _ = writeln!(err, "{e}");
    if matches!(e, CommandError::FlagUsage(_)) {
        let _ = writeln!(err);
    } else {
        let _ = writeln!(out, "FAILED");
        let _ = writeln!(out);
    }
    let _ = write!(out, "{}", commands::help(spec, "cf"));
    ExitCode::from(1)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(|a| a.parse::<u16>()) {
        Some(Ok(port)) => plugin(port, &args[1..]).await,
        _ => {
            eprintln!("{NOT_STANDALONE}");
            ExitCode::from(1)
        }
    }
}
