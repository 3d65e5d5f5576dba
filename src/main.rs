//! The `shardgate` command: run the gateway, the bundled mock upstream, or the load generator.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use signal_hook::consts::{SIGINT, SIGTERM};

use shardgate::config::{Config, LogConfig};
use shardgate::gateway::Gateway;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "Thread-per-core gateway for the OpenAI Responses API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file and exit.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config.log);
    let shards = config.server.shards;
    let accounts = config.accounts.len();
    let gateway = Gateway::start(config).context("starting the gateway")?;
    println!("shardgate listening on http://{}/v1", gateway.addr());
    tracing::info!(addr = %gateway.addr(), shards, accounts, "gateway started");
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    gateway.stop();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => Config::load(&config)
            .with_context(|| format!("loading {}", config.display()))
            .and_then(serve),
        Command::CheckConfig { config } => Config::load(&config)
            .with_context(|| format!("loading {}", config.display()))
            .map(|c| {
                println!(
                    "config ok: {} shard(s), {} client key(s), {} account(s)",
                    c.server.shards,
                    c.client_keys.len(),
                    c.accounts.len()
                )
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
