//! ChatGPT/Codex OAuth accounts (`auth = "chatgpt_oauth"`): their config table, the token
//! endpoint client, the state file that keeps rotated refresh tokens across restarts, and the
//! refresher thread that renews access tokens ahead of expiry. Shards never refresh: they read
//! the credential in force ([`token::ShardToken`]) when they dial or send a request, and ask the
//! refresher (a message, [`OAuthRegistry::ask_refresh`]) when upstream answers 401.

pub mod refresher;
pub mod state_file;
pub mod token;
pub mod token_client;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};
use futures_channel::oneshot;

use crate::config::Config;
use crate::metrics::export::InPlace;
use token::{AccountToken, Credential};

/// Refresh requests queued at most; a shard whose request does not fit treats it as refused.
const REQUEST_CAPACITY: usize = 1024;

/// A shard's request for a refresh after upstream refused credential `seen` with a 401.
pub struct RefreshRequest {
    /// The account, by config index.
    pub account: usize,
    /// The credential generation upstream refused.
    pub seen: u64,
    /// `true` once a newer credential is in force, `false` when the refresh failed.
    pub reply: oneshot::Sender<bool>,
}

/// What the refresher thread receives.
pub enum RefresherMsg {
    /// Refresh now (deduplicated by generation).
    Refresh(RefreshRequest),
    /// Stop the thread.
    Stop,
}

/// Every OAuth account's token, by config index, and the way to the refresher. Shared by the
/// shards (through [`crate::reload::LiveSettings`]), the refresher and the control thread
/// (which publishes the counters).
pub struct OAuthRegistry {
    tokens: Box<[Option<Arc<AccountToken>>]>,
    ids: Box<[String]>,
    requests: Sender<RefresherMsg>,
    receiver: Mutex<Option<Receiver<RefresherMsg>>>,
}

impl OAuthRegistry {
    /// The tokens as `config` gives them (the refresher puts the state file's in force before
    /// the shards start).
    pub fn new(config: &Config) -> OAuthRegistry {
        let (requests, receiver) = bounded(REQUEST_CAPACITY);
        OAuthRegistry {
            tokens: config
                .accounts
                .iter()
                .map(|a| {
                    a.oauth.as_ref().map(|o| {
                        Arc::new(AccountToken::new(Credential::new(
                            o.access_token.as_ref(),
                            &o.refresh_token,
                        )))
                    })
                })
                .collect(),
            ids: config.accounts.iter().map(|a| a.id.clone()).collect(),
            requests,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Account `index`'s token, when it is an OAuth account.
    pub fn token(&self, index: usize) -> Option<Arc<AccountToken>> {
        self.tokens.get(index).cloned().flatten()
    }

    /// Asks the refresher for a credential newer than `seen`; `None` when the request could
    /// not be queued (the caller treats it as a failed refresh).
    pub fn ask_refresh(&self, account: usize, seen: u64) -> Option<oneshot::Receiver<bool>> {
        let (reply, answer) = oneshot::channel();
        let msg = RefresherMsg::Refresh(RefreshRequest {
            account,
            seen,
            reply,
        });
        self.requests.try_send(msg).ok().map(|()| answer)
    }

    /// The refresher's end of the request queue (taken once).
    fn take_receiver(&self) -> Option<Receiver<RefresherMsg>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Writes the counters for stats and `/metrics` (none without OAuth accounts):
    /// `oauth_accounts_failed` (accounts out of rotation now), `oauth_state_write_failures`, and
    /// per account `oauth_refreshes{account}` and
    /// `oauth_refresh_failures{account}`.
    pub fn write_counters(&self, out: &mut InPlace<'_>) {
        let accounts = || {
            self.tokens
                .iter()
                .zip(self.ids.iter())
                .filter_map(|(t, id)| t.as_ref().map(|t| (t, id.as_str())))
        };
        if accounts().next().is_none() {
            return;
        }
        let (mut failed, mut write_failures) = (0, 0);
        for (token, _) in accounts() {
            failed += u64::from(token.is_failed());
            write_failures += token.state_write_failures.load(Ordering::Relaxed);
        }
        out.counter("oauth_accounts_failed", failed);
        out.counter("oauth_state_write_failures", write_failures);
        out.family(
            "oauth_refreshes",
            accounts().map(|(t, id)| (id, t.refreshes.load(Ordering::Relaxed))),
        );
        out.family(
            "oauth_refresh_failures",
            accounts().map(|(t, id)| (id, t.refresh_failures.load(Ordering::Relaxed))),
        );
    }

    fn stop(&self) {
        // Waits for room: the queue may be full of refresh requests, which the thread drains.
        let _ = self
            .requests
            .send_timeout(RefresherMsg::Stop, std::time::Duration::from_secs(5));
    }
}
