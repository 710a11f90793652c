//! `policy-server`: the c2c control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use policy_api::Server;
use policy_api::config::{Config, LogFormat, Secret, TokenVerification};

/// c2c policy server: Cloud Foundry's network policy API, compatible with the cf CLI's
/// network-policy commands.
///
/// Quick start on a laptop (insecure, in memory, fake UAA and Cloud Controller; a build
/// with the `dev` feature):
///
///     cargo run -p policy-api --features dev --bin policy-server -- --dev
///
/// In production, write a config file (`policy-server --print-default-config > c2c.toml`,
/// then edit) and run `policy-server --config c2c.toml`. Flags and C2C_* environment
/// variables override the file.
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// TOML config file; every key is optional (see docs/policy-server-config.md).
    #[arg(short, long, env = "C2C_CONFIG")]
    config: Option<PathBuf>,

    /// Local development mode: 127.0.0.1, in-memory SQLite, built-in UAA and Cloud
    /// Controller doubles, prints an admin token. Only in builds with the `dev` feature;
    /// never in production.
    #[arg(long)]
    dev: bool,

    /// Print the default config file and exit.
    #[arg(long)]
    print_default_config: bool,

    /// External API listen address [default: 0.0.0.0:4002; 127.0.0.1:4002 with --dev].
    #[arg(long, env = "C2C_LISTEN")]
    listen: Option<SocketAddr>,

    /// Cells' API (mTLS) listen address [default: 0.0.0.0:4003; 127.0.0.1:4003 with --dev].
    #[arg(long, env = "C2C_INTERNAL_LISTEN")]
    internal_listen: Option<SocketAddr>,

    /// Prometheus metrics listen address [default: 127.0.0.1:31821].
    #[arg(long, env = "C2C_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Database URL: sqlite://PATH?mode=rwc, postgres://USER@HOST/DB or mysql://USER@HOST/DB.
    /// A URL with a password is refused on the command line (ps shows it): use the
    /// environment variable or the config file.
    #[arg(long, env = "C2C_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// UAA base URL.
    #[arg(long, env = "C2C_UAA_URL")]
    uaa_url: Option<String>,

    /// The server's UAA client secret: the environment variable or the config file only (the
    /// flag is refused, as ps would show it).
    #[arg(long, env = "C2C_UAA_CLIENT_SECRET", hide_env_values = true)]
    uaa_client_secret: Option<String>,

    /// How tokens are verified.
    #[arg(long, env = "C2C_TOKEN_VERIFICATION", value_enum)]
    token_verification: Option<TokenVerification>,

    /// Cloud Controller base URL.
    #[arg(long, env = "C2C_CC_URL")]
    cc_url: Option<String>,

    /// Log filter: error, warn, info, debug, trace.
    #[arg(long, env = "C2C_LOG_LEVEL")]
    log_level: Option<String>,

    /// Log format.
    #[arg(long, env = "C2C_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

fn apply(args: &Args, config: &mut Config) {
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.internal_listen {
        config.internal.listen = v;
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = Some(v);
    }
    if let Some(v) = &args.database_url {
        config.database_url = policy_api::config::DatabaseUrl(v.clone());
    }
    if let Some(v) = &args.uaa_url {
        config.uaa.url = v.clone();
    }
    if let Some(v) = &args.uaa_client_secret {
        config.uaa.client_secret = Secret(v.clone());
    }
    if let Some(v) = args.token_verification {
        config.uaa.verification = v;
    }
    if let Some(v) = &args.cc_url {
        config.cloud_controller.url = v.clone();
    }
    if let Some(v) = &args.log_level {
        config.log_level = v.clone();
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Whether a database URL carries a password (or might: anything unparseable with an `@`).
fn url_has_password(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(u) => u.password().is_some(),
        Err(_) => url.contains('@'),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Command lines are visible to every local user (`ps`): secrets come from the
    // environment or the config file.
    for (id, flag, env) in [
        ("database_url", "--database-url", "C2C_DATABASE_URL"),
        ("uaa_client_secret", "--uaa-client-secret", "C2C_UAA_CLIENT_SECRET"),
    ] {
        let on_command_line = matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let secret = match id {
            "database_url" => args.database_url.as_deref().is_some_and(url_has_password),
            _ => true,
        };
        if on_command_line && secret {
            anyhow::bail!("{flag} would show a secret to every local user (ps); set {env} or the config file instead");
        }
    }
    if args.print_default_config {
        print!("{}", Config::default_toml());
        return Ok(());
    }

    #[cfg(feature = "dev")]
    let mut dev_world = None;
    let mut config = if args.dev {
        #[cfg(feature = "dev")]
        {
            let refused = policy_api::dev::refusals(
                args.config.is_some(),
                args.database_url.as_deref(),
                &[args.listen, args.internal_listen, args.metrics_listen],
                &[
                    ("--uaa-url", args.uaa_url.is_some()),
                    ("--uaa-client-secret", args.uaa_client_secret.is_some()),
                    ("--token-verification", args.token_verification.is_some()),
                    ("--cc-url", args.cc_url.is_some()),
                ],
                std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()),
            );
            if !refused.is_empty() {
                anyhow::bail!("--dev refuses to start:\n  {}", refused.join("\n  "));
            }
            let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4002)));
            let internal = args.internal_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4003)));
            let world = policy_api::dev::start(listen, internal)
                .await
                .context("starting the UAA and Cloud Controller doubles")?;
            let config = world.config.clone();
            dev_world = Some(world);
            config
        }
        #[cfg(not(feature = "dev"))]
        anyhow::bail!(
            "this policy-server was built without --dev (a production build has no test doubles); \
             for local development run: cargo run -p policy-api --features dev --bin policy-server -- --dev"
        )
    } else {
        match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        }
    };
    apply(&args, &mut config);
    config.validate()?;
    init_logging(&config);
    match policy_api::database_url::tls_posture(&config.database_url.0) {
        Ok(policy_api::database_url::TlsPosture::Plain) => {
            tracing::warn!("the database connection is not encrypted (sslmode=disable / ssl-mode=DISABLED)")
        }
        Ok(policy_api::database_url::TlsPosture::Unverified) => tracing::warn!(
            "the database connection is encrypted but its certificate is not checked; use verify-full / VERIFY_IDENTITY"
        ),
        _ => {}
    }

    let server = Server::start(&config).await.context("starting policy-server")?;
    #[cfg(feature = "dev")]
    if let Some(world) = &dev_world {
        eprintln!("{}", policy_api::dev::banner(world, &server.url(), server.internal_addr, server.metrics_addr));
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
