//! The mock as a process: arguments, start-up line, and running until SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::config::MockConfig;
use super::handle::start;

/// Command-line options of the mock upstream.
#[derive(clap::Args, Clone, Debug)]
pub struct MockArgs {
    /// Address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Executor threads, all bound to the same port.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Serve TLS with a fresh self-signed certificate for localhost and 127.0.0.1.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Write the self-signed certificate (PEM) to this file; needs --tls-self-signed.
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
    /// Require `Authorization: Bearer <KEY>` on handshakes and requests.
    #[arg(long)]
    pub require_key: Option<String>,
    /// Text deltas per turn.
    #[arg(long, default_value_t = 8)]
    pub deltas: usize,
    /// Bytes of text per delta.
    #[arg(long, default_value_t = 8)]
    pub delta_bytes: usize,
    /// Delay before the first delta, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Delay between events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub inter_event_ms: u64,
    /// Act as the ChatGPT backend for this `chatgpt-account-id`: requests need an access token
    /// issued by `POST /oauth/token`; needs --oauth-refresh-token.
    #[arg(long, requires = "oauth_refresh_token")]
    pub oauth_account_id: Option<String>,
    /// The refresh token the OAuth account starts with.
    #[arg(long, requires = "oauth_account_id")]
    pub oauth_refresh_token: Option<String>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub oauth_lifetime_secs: u64,
    /// Cut WebSocket connections silent this long between turns, in seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    pub idle_cut_secs: f64,
    /// Ping WebSocket connections this often between turns, in seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    pub ping_every_secs: f64,
}

impl MockArgs {
    /// The server configuration these options describe.
    pub fn config(&self) -> MockConfig {
        MockConfig {
            listen: self.listen,
            shards: self.shards,
            tls_self_signed: self.tls_self_signed,
            require_key: self.require_key.clone(),
            deltas: self.deltas,
            delta_bytes: self.delta_bytes,
            ttft: Duration::from_millis(self.ttft_ms),
            inter_event: Duration::from_millis(self.inter_event_ms),
            oauth: match (&self.oauth_account_id, &self.oauth_refresh_token) {
                (Some(account_id), Some(refresh_token)) => Some(super::oauth::MockOAuth {
                    account_id: account_id.clone(),
                    refresh_token: refresh_token.clone(),
                    access_token: None,
                    lifetime: Duration::from_secs(self.oauth_lifetime_secs.max(1)),
                }),
                _ => None,
            },
            idle_cut: positive_secs(self.idle_cut_secs),
            ping_every: positive_secs(self.ping_every_secs),
        }
    }
}

/// A duration from seconds; zero, negative or not a number: none.
fn positive_secs(secs: f64) -> Option<Duration> {
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

/// Starts the mock, prints `mock-upstream listening on <base url>` and serves until SIGTERM or
/// SIGINT.
pub fn run_cli(args: MockArgs) -> anyhow::Result<()> {
    if args.ca_out.is_some() && !args.tls_self_signed {
        anyhow::bail!("--ca-out needs --tls-self-signed");
    }
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let handle = start(args.config()).with_context(|| format!("starting on {}", args.listen))?;
    if let (Some(path), Some(pem)) = (&args.ca_out, handle.ca_pem()) {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "mock-upstream listening on {}", handle.base_url())?;
    stdout.flush()?;
    drop(stdout);
    let signal = signals.forever().next();
    tracing::info!(?signal, "mock-upstream stopping");
    handle.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    #[test]
    fn options_map_to_the_config() {
        let cli = Cli::parse_from([
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--require-key",
            "k",
            "--ttft-ms",
            "5",
            "--inter-event-ms",
            "1",
        ]);
        let cfg = cli.mock.config();
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.require_key.as_deref(), Some("k"));
        assert_eq!(cfg.ttft, Duration::from_millis(5));
        assert_eq!(cfg.inter_event, Duration::from_millis(1));
        assert_eq!(cfg.deltas, 8);
        let default = Cli::parse_from(["mock"]).mock;
        assert_eq!(default.listen.port(), 9000);
    }
}
