//! The `shardgate` command: run the gateway, the bundled mock upstream, or the load generator.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use shardgate::config::Config;
use shardgate::error_chain::one_line;
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
    /// Run the gateway. Without `--config`, runs an offline demo: the bundled mock upstream
    /// in-process and a built-in config (listen 127.0.0.1:8080, client key `sk-gw-local`).
    Serve {
        /// Config file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address for the offline demo.
        #[arg(long, default_value = "127.0.0.1:8080", conflicts_with = "config")]
        demo_listen: String,
    },
    /// Run the scriptable mock upstream (for tests, perf and trying the gateway offline).
    MockUpstream(shardgate::mock::MockArgs),
    /// Drive a Responses WebSocket endpoint with many client connections and report latencies.
    Load(shardgate::load::LoadArgs),
    /// Show a running gateway's latency histograms and counters, read from its stats socket.
    Stats {
        /// The gateway's stats socket (`[server] stats_socket`).
        #[arg(long)]
        socket: PathBuf,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
        /// Print the raw JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Print one histogram as an HdrHistogram V2 interval log (for HdrHistogram's tools):
        /// one interval per window slot.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["watch", "json"])]
        hist: Option<String>,
        /// With `--hist`: one interval with the totals since start instead.
        #[arg(long, requires = "hist")]
        total: bool,
    },
    /// Check a config file and exit.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

/// The offline demo: the mock upstream in this process and a config pointing at it.
fn demo(listen: &str) -> anyhow::Result<()> {
    let mock = shardgate::mock::start(shardgate::mock::MockConfig::default())
        .context("starting the bundled mock upstream")?;
    let tmp = std::env::temp_dir();
    let usage = tmp.join("shardgate-demo-usage.jsonl");
    let stats = tmp.join("shardgate-demo-stats.sock");
    let text = format!(
        "[server]\nlisten = \"{listen}\"\nstats_socket = \"{}\"\n\
         [[client_keys]]\nkey = \"sk-gw-local\"\nid = \"demo\"\n\
         [[accounts]]\nid = \"mock\"\nbase_url = \"{}\"\napi_key = \"sk-mock\"\nmax_conns = 64\nmodels = [\"gpt-5\"]\n\
         [usage]\npath = \"{}\"\nspool_dir = \"{}\"\n",
        stats.display(),
        mock.base_url(),
        usage.display(),
        tmp.join("shardgate-demo-usage-spool").display()
    );
    let config = Config::parse(&text, &|_| None).context("building the demo config")?;
    eprintln!(
        "shardgate: no --config given, running the offline demo against the bundled mock upstream at {}\n\
         shardgate: point a client at http://{listen}/v1 with API key sk-gw-local\n\
         shardgate: usage records go to {}\n\
         shardgate: see its measurements with `{} stats --watch --socket {}`\n\
         shardgate: stop it with Ctrl-C (or SIGTERM): in-flight turns finish first",
        mock.base_url(),
        usage.display(),
        own_path().display(),
        stats.display()
    );
    let result = serve(config, None);
    mock.stop();
    result
}

/// This binary's path as a user can type it: relative to the working directory when inside it
/// (`target/release/shardgate` from a checkout), `shardgate` when unknown.
fn own_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("shardgate"));
    std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(exe)
}

/// Runs the gateway until SIGTERM/SIGINT; SIGHUP reloads `path` (the live settings only).
fn serve(config: Config, path: Option<&Path>) -> anyhow::Result<()> {
    let _log_guard = shardgate::logging::init(&config.log);
    let drain = config.server.drain_timeout;
    let shards = config.server.shards;
    let accounts = config.accounts.len();
    // Installed before the banner: a SIGTERM sent as soon as the address is printed drains.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let gateway = Gateway::start(config).context("starting the gateway")?;
    println!("shardgate listening on {scheme}://{}/v1", gateway.addr());
    tracing::info!(addr = %gateway.addr(), shards, accounts, "gateway started");
    for sig in signals.forever() {
        if sig == SIGHUP {
            reload(&gateway, path);
            continue;
        }
        tracing::info!(
            signal = sig,
            drain_timeout_secs = drain.as_secs_f64(),
            "stopping: no new connections, waiting for in-flight turns, then flushing usage records"
        );
        break;
    }
    // A second signal while draining means "now": exit without waiting for turns. Records the
    // control thread still holds in memory are lost then; everything already written is kept.
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::warn!(signal = sig, "second signal: exiting without draining");
            std::process::exit(130);
        }
    });
    gateway.stop();
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the config file and applies what may change while running; a config that does not
/// load, or changes the account list, is refused and the running one stays.
fn reload(gateway: &Gateway, path: Option<&Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: the demo has no config file to reload");
        return;
    };
    let outcome = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|new| gateway.reload(&new).map_err(anyhow::Error::from));
    match outcome {
        Ok(report) => {
            if !report.needs_restart.is_empty() {
                tracing::warn!(
                    sections = ?report.needs_restart,
                    "config reload: these sections changed but take effect only after a restart"
                );
            }
            tracing::info!(applied = ?report.applied, path = %path.display(), "config reloaded");
        }
        Err(e) => tracing::error!(
            path = %path.display(),
            "config reload refused, the running config stays: {}",
            one_line(e.as_ref())
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config: Some(config),
            ..
        } => Config::load(&config)
            .with_context(|| format!("loading {}", config.display()))
            .and_then(|loaded| serve(loaded, Some(&config))),
        Command::Serve {
            config: None,
            demo_listen,
        } => demo(&demo_listen),
        Command::MockUpstream(args) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            shardgate::mock::run_cli(args)
        }
        Command::Load(args) => shardgate::load::run_cli(args),
        Command::Stats {
            socket,
            hist: Some(name),
            total,
            ..
        } => {
            shardgate::stats::client::print_hist(&socket, &name, total).map_err(anyhow::Error::from)
        }
        Command::Stats {
            socket,
            watch,
            json,
            ..
        } => shardgate::stats::client::run(&socket, watch, json).map_err(anyhow::Error::from),
        Command::CheckConfig { config } => Config::load(&config)
            .with_context(|| format!("loading {}", config.display()))
            .and_then(|c| {
                // The listener's certificate and key are checked as a start would.
                if let Some(files) = &c.server.tls {
                    shardgate::net::tls_server::server_config(files)?;
                }
                Ok(c)
            })
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
            eprintln!("shardgate: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
