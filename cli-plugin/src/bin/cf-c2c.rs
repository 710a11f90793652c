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

const STANDALONE_USAGE: &str = "\
Install it into the cf CLI:  cf install-plugin ./cf-c2c
Then:                        cf c2c-policies | cf c2c-add-policy | cf c2c-remove-policy

Or run it standalone, with the target and login of `cf login` (read from $CF_HOME/.cf/config.json):
  cf-c2c network-policies [--source SOURCE_APP]
  cf-c2c add-network-policy SOURCE_APP DESTINATION_APP [-s SPACE [-o ORG]] [--protocol (tcp | udp) --port RANGE]
  cf-c2c remove-network-policy SOURCE_APP DESTINATION_APP [-s SPACE [-o ORG]] --protocol (tcp | udp) --port RANGE
(the c2c-* names work too; add --help to a command for its options)";

/// Parses and runs one command, printing as cf does. `target(false)` gives the target;
/// when an API answers 401, `target(true)` gives one with a fresh token and the command runs
/// once more (the first attempt's output is dropped, so nothing prints twice).
async fn execute<F, Fut>(name: &str, args: &[String], target: F) -> ExitCode
where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = Result<Target, String>>,
{
    let Some(spec) = commands::lookup(name) else {
        eprintln!("'{name}' is not a command of this plugin.\n\n{STANDALONE_USAGE}");
        return ExitCode::from(1);
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    if args.iter().any(|a| a == "-h" || a == "--help" || a == "--h") {
        let _ = write!(out, "{}", commands::help(spec, "cf"));
        return ExitCode::SUCCESS;
    }
    let parsed = match commands::parse(spec, args) {
        Ok(c) => c,
        Err(e) => return usage_failure(spec, &e, &mut out, &mut err),
    };
    let mut result = Err(CommandError::Message(String::new()));
    for fresh in [false, true] {
        let target = match target(fresh).await {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(err, "{e}");
                let _ = writeln!(out, "FAILED");
                return ExitCode::from(1);
            }
        };
        let (mut buf_out, mut buf_err) = (Vec::new(), Vec::new());
        let mut ui = Ui { out: &mut buf_out, err: &mut buf_err };
        result = commands::run(&parsed, &target, &mut ui).await;
        if fresh || !matches!(result, Err(CommandError::Unauthorized(_))) {
            let _ = out.write_all(&buf_out);
            let _ = err.write_all(&buf_err);
            break;
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            let _ = writeln!(out, "FAILED");
            ExitCode::from(1)
        }
    }
}

async fn plugin(port: u16, args: &[String]) -> ExitCode {
    let rpc = CliRpc { port };
    let Some(command) = args.first() else {
        eprintln!("{NOT_STANDALONE}\n{STANDALONE_USAGE}");
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
    // cf's AccessToken refreshes a token that is about to expire; asking again is the retry.
    execute(command, &args[1..], |_| async move { Target::from_rpc(&rpc).await.map_err(|e| e.to_string()) }).await
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
        Some(Err(_)) => {
            let path = cli_plugin::cf_config::config_path();
            let path = &path;
            execute(&args[0], &args[1..], |fresh| async move {
                cli_plugin::cf_config::load(path, fresh).await.map_err(|e| e.to_string())
            })
            .await
        }
        None => {
            eprintln!("{NOT_STANDALONE}\n{STANDALONE_USAGE}");
            ExitCode::from(1)
        }
    }
}
