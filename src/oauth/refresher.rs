//! The refresher thread: renews every OAuth account's access token ahead of expiry (at 80 % of
//! its lifetime, or 5 minutes before it ends when that is earlier, never before half of it),
//! at once when a shard reports a 401 for the credential in force, and with backoff (1 s
//! doubling to 5 min) after a failure. A rotated refresh token is written to the state file
//! before it is put in force. A refresh that fails when upstream already refused the token (or
//! the token has expired) takes the account out of rotation until a refresh succeeds.
//!
//! It is a plain thread because the token request blocks; shards never wait on it except a
//! turn that got a 401, which awaits its one-shot answer without blocking its shard.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use futures_channel::oneshot;

use super::state_file::{self, StateFileError, Stored};
use super::token::{AccountToken, Credential};
use super::token_client::{self, jwt_lifetime, MAX_LIFETIME};
use super::{OAuthRegistry, RefreshRequest, RefresherMsg};
use crate::config::OAuthConfig;
use crate::config::{Account, Config, Endpoint, Secret};
use crate::net::proxy::ProxyUrl;

/// Longest a whole token request may take (connect, proxy, TLS, request and answer).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(20);
/// The lifetime assumed when the endpoint gives none and the token is no JWT.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The first retry after a failed refresh; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between failed refreshes.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long before expiry a refresh is due, at most.
const EARLY: Duration = Duration::from_secs(300);

/// Why the refresher could not start.
#[derive(Debug, thiserror::Error)]
pub enum RefresherError {
    /// A state file could not be read, or its directory does not exist.
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    /// The thread could not be spawned.
    #[error("cannot start the oauth refresher thread: {0}")]
    Thread(std::io::Error),
}

/// The running refresher thread; stopped (and joined) when dropped.
pub struct Refresher {
    registry: Arc<OAuthRegistry>,
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Reads every OAuth account's state file, puts the stored tokens in force, refreshes the
    /// ones already due (so no shard starts with a token known to be stale; this waits for the
    /// token endpoint, at most 20 s per account) and starts the thread; `None` when the config has
    /// no OAuth account.
    pub fn start(
        config: &Config,
        registry: &Arc<OAuthRegistry>,
    ) -> Result<Option<Refresher>, RefresherError> {
        let mut slots = Vec::new();
        for (index, account) in config.accounts.iter().enumerate() {
            let (Some(cfg), Some(token)) = (&account.oauth, registry.token(index)) else {
                continue;
            };
            let mut slot = Slot::open(account, index, cfg.clone(), token)?;
            // A token that is due (none configured, or expired) is refreshed before any shard
            // dials with it; a failure leaves the account out of rotation and the thread retries.
            if slot.due <= Instant::now() {
                slot.refresh();
            }
            slots.push(slot);
        }
        if slots.is_empty() {
            return Ok(None);
        }
        let Some(rx) = registry.take_receiver() else {
            return Ok(None);
        };
        let thread = std::thread::Builder::new()
            .name("oauth-refresher".into())
            .spawn(move || run(slots, rx))
            .map_err(RefresherError::Thread)?;
        Ok(Some(Refresher {
            registry: registry.clone(),
            thread: Some(thread),
        }))
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.registry.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a token of `lifetime` is due for refresh, counted from its issue.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let at = lifetime.mul_f64(0.8).min(lifetime.saturating_sub(EARLY));
    at.max(lifetime / 2)
}

/// The wait after `failures` consecutive failed refreshes.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// One OAuth account as the refresher keeps it.
struct Slot {
    id: String,
    index: usize,
    cfg: OAuthConfig,
    ca_file: Option<PathBuf>,
    proxy: Option<ProxyUrl>,
    token: Arc<AccountToken>,
    seed: String,
    refresh: Secret,
    expires_at: Option<Instant>,
    due: Instant,
    failures: u32,
    /// A shard saw a 401 for the credential in force.
    unauthorized: bool,
    waiting: Vec<oneshot::Sender<bool>>,
}

impl Slot {
    fn open(
        account: &Account,
        index: usize,
        cfg: OAuthConfig,
        token: Arc<AccountToken>,
    ) -> Result<Slot, StateFileError> {
        state_file::check_location(&cfg.state_file)?;
        let seed = state_file::seed_of(&cfg.refresh_token);
        let now = Instant::now();
        let mut slot = Slot {
            refresh: cfg.refresh_token.clone(),
            expires_at: None,
            due: now,
            failures: 0,
            unauthorized: false,
            waiting: Vec::new(),
            id: account.id.clone(),
            index,
            seed,
            ca_file: account.ca_file.clone(),
            proxy: account.proxy.clone(),
            token,
            cfg,
        };
        let source = match state_file::load(&slot.cfg.state_file, &slot.seed)? {
            Some(stored) => {
                let now_unix = state_file::unix_now();
                // The file can be edited by hand: its times are bounded like a peer's.
                let lifetime =
                    Duration::from_secs(stored.expires_at.saturating_sub(stored.issued_at))
                        .min(MAX_LIFETIME);
                let age = Duration::from_secs(now_unix.saturating_sub(stored.issued_at));
                let left = Duration::from_secs(stored.expires_at.saturating_sub(now_unix))
                    .min(MAX_LIFETIME);
                slot.expires_at = Some(now + left);
                slot.due = now + refresh_after(lifetime).saturating_sub(age);
                slot.token.publish(Credential::new(
                    Some(&stored.access_token),
                    &stored.refresh_token,
                ));
                slot.refresh = stored.refresh_token;
                "state file"
            }
            None => {
                let left = slot
                    .cfg
                    .access_token
                    .as_ref()
                    .and_then(|a| jwt_lifetime(a.expose()));
                if let Some(left) = left {
                    slot.expires_at = Some(now + left);
                    slot.due = now + refresh_after(left);
                }
                "config"
            }
        };
        tracing::info!(
            account = %slot.id,
            tokens_from = source,
            refresh_in_secs = slot.due.saturating_duration_since(now).as_secs(),
            "oauth account ready"
        );
        Ok(slot)
    }

    fn ask(&mut self, req: RefreshRequest, now: Instant) {
        if self.token.generation() != req.seen {
            let _ = req.reply.send(true);
        } else if self.token.is_failed() && self.due > now {
            // Backing off after a failed refresh: asking again would only hammer the endpoint.
            let _ = req.reply.send(false);
        } else {
            self.unauthorized = true;
            self.due = now;
            self.waiting.push(req.reply);
        }
    }

    fn refresh(&mut self) {
        let result = Endpoint::parse(&self.cfg.token_url)
            .map_err(|_| token_client::RefreshError::BadAnswer("token_url does not parse"))
            .and_then(|url| {
                token_client::refresh(
                    &url,
                    self.ca_file.as_deref(),
                    self.proxy.as_ref(),
                    &self.cfg.client_id,
                    &self.refresh,
                    TOKEN_TIMEOUT,
                )
            });
        let now = Instant::now();
        let ok = match result {
            Ok(issued) => {
                let lifetime = issued.lifetime.unwrap_or(DEFAULT_LIFETIME);
                if let Some(rotated) = issued.refresh_token {
                    self.refresh = rotated;
                }
                let issued_at = state_file::unix_now();
                let stored = Stored {
                    access_token: issued.access_token,
                    refresh_token: self.refresh.clone(),
                    issued_at,
                    expires_at: issued_at + lifetime.as_secs(),
                };
                // Written before it is put in force: a restart must never find only a spent token.
                if let Err(e) = state_file::save(&self.cfg.state_file, &self.seed, &stored) {
                    self.token
                        .state_write_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(
                        account = %self.id,
                        error = %e,
                        "oauth state file not written: the rotated refresh token is kept in memory only until a write succeeds"
                    );
                }
                self.token
                    .publish(Credential::new(Some(&stored.access_token), &self.refresh));
                self.token
                    .refreshes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.failures = 0;
                self.expires_at = Some(now + lifetime);
                self.due = now + refresh_after(lifetime);
                tracing::info!(
                    account = %self.id,
                    expires_in_secs = lifetime.as_secs(),
                    next_refresh_secs = refresh_after(lifetime).as_secs(),
                    "oauth token refreshed"
                );
                true
            }
            Err(e) => {
                self.failures += 1;
                self.token
                    .refresh_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let retry = backoff(self.failures);
                let expired = self.expires_at.is_none_or(|t| now >= t);
                if self.unauthorized || expired {
                    self.token.mark_failed();
                    tracing::error!(
                        account = %self.id,
                        error = %e,
                        retry_in_secs = retry.as_secs(),
                        "oauth refresh failed: account out of rotation until a refresh succeeds"
                    );
                } else {
                    tracing::warn!(
                        account = %self.id,
                        error = %e,
                        retry_in_secs = retry.as_secs(),
                        "oauth refresh failed; the current token is still valid"
                    );
                }
                self.due = match self.expires_at {
                    Some(t) if t > now => (now + retry).min(t),
                    _ => now + retry,
                };
                false
            }
        };
        self.unauthorized = false;
        for reply in self.waiting.drain(..) {
            let _ = reply.send(ok);
        }
    }
}

fn run(mut slots: Vec<Slot>, rx: Receiver<RefresherMsg>) {
    loop {
        let now = Instant::now();
        for slot in slots.iter_mut().filter(|s| s.due <= now) {
            slot.refresh();
        }
        let next = slots
            .iter()
            .map(|s| s.due)
            .min()
            .unwrap_or(now + MAX_BACKOFF);
        match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(RefresherMsg::Refresh(req)) => {
                match slots.iter_mut().find(|s| s.index == req.account) {
                    Some(slot) => slot.ask(req, Instant::now()),
                    None => {
                        let _ = req.reply.send(false);
                    }
                }
            }
            Ok(RefresherMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_ahead_of_expiry_and_backs_off() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_after(hour), hour.mul_f64(0.8));
        assert_eq!(
            refresh_after(Duration::from_secs(1200)),
            Duration::from_secs(900)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(6)),
            Duration::from_secs(3)
        );
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn a_state_file_with_a_far_expiry_opens() {
        let dir = std::env::temp_dir().join(format!("sg-oauth-far-{:x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("a.json");
        let text = format!(
            "[usage]\npath = \"/var/lib/shardgate/usage.jsonl\"\n[[client_keys]]\nkey = \"sk-gw\"\n\
             [[accounts]]\nid = \"codex\"\nauth = \"chatgpt_oauth\"\n[accounts.oauth]\n\
             refresh_token = \"rt\"\nchatgpt_account_id = \"acc\"\nstate_file = {:?}\n",
            state.display().to_string()
        );
        let config = Config::parse(&text, &|_| None).unwrap();
        let cfg = config.accounts[0].oauth.clone().unwrap();
        let stored = Stored {
            access_token: Secret::new("at".into()),
            refresh_token: Secret::new("rt-2".into()),
            issued_at: 0,
            expires_at: u64::MAX,
        };
        state_file::save(&state, &state_file::seed_of(&cfg.refresh_token), &stored).unwrap();
        let token = Arc::new(AccountToken::new(Credential::new(None, &cfg.refresh_token)));
        let slot = Slot::open(&config.accounts[0], 0, cfg, token).unwrap();
        assert!(slot.expires_at.unwrap() <= Instant::now() + MAX_LIFETIME);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
