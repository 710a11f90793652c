//! `policy-sync`: export every policy of a foundation to a YAML file, or apply such a file
//! to a foundation, idempotently, through the generated client.
//!
//!     policy-sync --api https://api.sys.example.com export -o policies.yaml
//!     policy-sync --api https://api.other.example.com apply policies.yaml --dry-run
//!     policy-sync --api https://api.other.example.com apply policies.yaml [--prune]
//!
//! The token comes from `C2C_TOKEN` (e.g. `export C2C_TOKEN=$(cf oauth-token | cut -d' ' -f2)`);
//! an admin (`network.admin`) sees and may change every policy.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use examples::policy_file::{self, PolicyFile};

/// Export a foundation's network policies to a YAML file, or apply such a file to a
/// foundation (idempotent: only the difference is sent).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// The policy server's external URL (the CF API's, behind the gorouter).
    #[arg(long, env = "C2C_API")]
    api: String,
    /// A UAA access token (without "bearer"); prefer the environment variable.
    #[arg(long, env = "C2C_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write every policy to a YAML file (or to standard output).
    Export {
        /// Where to write; standard output when absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Make the foundation hold the file's policies.
    Apply {
        file: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the policies the file does not list.
        #[arg(long)]
        prune: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = args.token.trim().trim_start_matches("bearer ").trim_start_matches("Bearer ");
    let client = policy_client::Client::new_with_token(args.api.trim_end_matches('/'), token)
        .context("building the HTTP client")?;
    match args.command {
        Command::Export { output } => {
            let file = policy_file::export(&client).await?;
            let yaml = file.to_yaml();
            match output {
                Some(path) => {
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, &yaml).with_context(|| format!("writing {}", tmp.display()))?;
                    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("exported {} policies to {}", file.policies.len(), path.display());
                }
                None => print!("{yaml}"),
            }
        }
        Command::Apply { file, dry_run, prune } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let parsed = PolicyFile::parse(&text).with_context(|| format!("{}", file.display()))?;
            let changes = policy_file::apply(&client, &parsed, prune, dry_run).await?;
            print!("{}", changes.summary());
            if dry_run {
                println!("dry run: nothing was changed");
            }
        }
    }
    Ok(())
}
