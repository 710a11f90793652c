//! `netagent`: the c2c cell agent. Keeps this cell on the overlay (subnet lease, VTEP with
//! GBP, routes/ARP/FDB to every other cell) and serves the CNI plugin.
//!
//!     netagent --config /var/vcap/jobs/netagent/config/netagent.toml
//!     netagent --print-default-config

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use netagent::agent::Agent;
use netagent::config::Config;

/// c2c cell agent: overlay networking for this cell's containers.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// TOML config file (see docs/netagent.md); every key has a default but underlay_ip.
    #[arg(short, long, env = "C2C_NETAGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Print the default config and exit.
    #[arg(long)]
    print_default_config: bool,
    /// On shutdown, release the lease and remove the VTEP (the cell leaves the overlay).
    /// Without it, a restart keeps every route and connection.
    #[arg(long)]
    release_on_exit: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", toml::to_string_pretty(&Config::default())?);
        return Ok(());
    }
    let config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    config.validate()?;
    netagent::local_api::raise_open_files_limit();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| "info".into()))
        .json()
        .init();
    let agent = Agent::start(config.clone()).await.context("starting netagent")?;
    tracing::info!(listen = %agent.listen, overlay_subnet = %agent.lease.overlay_subnet, "netagent running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    agent.stop(&config, args.release_on_exit).await;
    Ok(())
}
