//! `shardgate load`: options, running, printing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::config::{LoadConfig, Stop, Target};
use super::run::run;

/// Command-line options of the load generator.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// URL of the Responses endpoint: `ws://` for WebSocket mode, `http://` for `POST` with SSE.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/responses")]
    pub url: String,
    /// Client key, sent as `Authorization: Bearer <KEY>`.
    #[arg(long, default_value = "sk-gw-local")]
    pub key: String,
    /// The `model` of every frame.
    #[arg(long, default_value = "gpt-5-codex")]
    pub model: String,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Turns per connection (default 10 unless --duration-secs is given).
    #[arg(long, conflicts_with = "duration_secs")]
    pub turns: Option<u64>,
    /// Run for this many seconds instead of a number of turns.
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Cap on turns started per second, over all connections.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Chain each turn to the previous response with `previous_response_id` (store=false).
    #[arg(long)]
    pub store_false_chain: bool,
    /// Send a `generate:false` warm-up before each turn and chain the turn to it, like Codex.
    #[arg(long)]
    pub warmup: bool,
    /// Pad every frame to about this many bytes (Codex sends 20–40 KB).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Executor threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// A turn or warm-up not finished after this many seconds counts as an error.
    #[arg(long, default_value_t = 30.0)]
    pub turn_timeout_secs: f64,
    /// Close each connection after this many turns and open a new one (connect storms).
    #[arg(long)]
    pub reconnect_every: Option<u64>,
    /// Idle mode: open this many connections, hold them --hold-secs without traffic, close.
    /// Prints `idle sessions open: N` once every connection has been attempted.
    #[arg(long, conflicts_with_all = ["turns", "duration_secs", "connections"])]
    pub idle_sessions: Option<usize>,
    /// Idle mode: how long each connection is held.
    #[arg(long, default_value_t = 5.0, requires = "idle_sessions")]
    pub hold_secs: f64,
    /// Idle mode: turns each connection runs (with --payload-bytes frames) before it is held.
    #[arg(long, default_value_t = 0, requires = "idle_sessions")]
    pub idle_turns: u64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write the percentile distribution of every histogram as CSV to this file.
    #[arg(long)]
    pub hist_out: Option<PathBuf>,
}

fn secs(option: &'static str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{option} {value} is not a duration"))
}

impl LoadArgs {
    /// The run these options describe (the URL is resolved here).
    pub fn config(&self) -> anyhow::Result<LoadConfig> {
        let mut config = LoadConfig::new(Target::parse(&self.url)?, &self.key);
        config.model = self.model.clone();
        config.connections = self.connections;
        config.stop = match (self.turns, self.duration_secs) {
            (_, Some(d)) => Stop::Duration(secs("--duration-secs", d)?),
            (Some(n), None) => Stop::Turns(n),
            (None, None) => Stop::Turns(10),
        };
        config.rate = self.rate;
        config.chain = self.store_false_chain;
        config.warmup = self.warmup;
        config.payload_bytes = self.payload_bytes;
        config.threads = self.threads;
        config.turn_timeout = secs("--turn-timeout-secs", self.turn_timeout_secs)?;
        config.reconnect_every = self.reconnect_every;
        if let Some(n) = self.idle_sessions {
            config.connections = n;
            config.idle_hold = Some(secs("--hold-secs", self.hold_secs)?);
            config.idle_turns = self.idle_turns;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Runs the load, prints the table to stdout and writes the JSON report when asked.
pub fn run_cli(args: LoadArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let report = run(config)?;
    print!("{}", report.table());
    if let Some(path) = &args.json_out {
        let json = report.to_json().context("serializing the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.hist_out {
        std::fs::write(path, report.distribution_csv())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    #[test]
    fn options_map_to_the_config() {
        let cli = Cli::parse_from([
            "load",
            "--url",
            "ws://127.0.0.1:9999/v1/responses",
            "--connections",
            "4",
            "--turns",
            "5",
            "--rate",
            "100",
            "--store-false-chain",
            "--warmup",
            "--payload-bytes",
            "30000",
            "--threads",
            "2",
        ]);
        let c = cli.load.config().unwrap();
        assert_eq!(c.connections, 4);
        assert_eq!(c.stop, Stop::Turns(5));
        assert_eq!(c.rate, Some(100.0));
        assert!(c.chain && c.warmup);
        assert_eq!(c.payload_bytes, 30000);
        assert_eq!(c.threads, 2);
        assert_eq!(c.turn_timeout, Duration::from_secs(30));
        let d = Cli::parse_from(["load", "--duration-secs", "1.5"])
            .load
            .config()
            .unwrap();
        assert_eq!(d.stop, Stop::Duration(Duration::from_millis(1500)));
        assert_eq!(
            Cli::parse_from(["load"]).load.config().unwrap().stop,
            Stop::Turns(10)
        );
        assert!(Cli::try_parse_from(["load", "--turns", "1", "--duration-secs", "1"]).is_err());
        let storm = Cli::parse_from(["load", "--reconnect-every", "1"])
            .load
            .config()
            .unwrap();
        assert_eq!(storm.reconnect_every, Some(1));
        let idle = Cli::parse_from(["load", "--idle-sessions", "500", "--hold-secs", "2"])
            .load
            .config()
            .unwrap();
        assert_eq!(idle.connections, 500);
        assert_eq!(idle.idle_hold, Some(Duration::from_secs(2)));
        assert!(Cli::try_parse_from(["load", "--hold-secs", "2"]).is_err());
        assert!(Cli::try_parse_from(["load", "--idle-sessions", "2", "--turns", "1"]).is_err());
        assert!(Cli::parse_from(["load", "--duration-secs=-1"])
            .load
            .config()
            .is_err());
    }
}
