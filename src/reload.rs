//! What a config reload (`SIGHUP`) may change while the gateway runs: the transport rollback
//! switches, the WebSocket canary shares and the client keys. `[upstream] force_http`, each
//! account's `transport` and `ws_canary_percent`, and the automatic rollback's verdicts are read
//! by the shards on every attempt from [`LiveSettings`], so an operator (or the control thread's
//! [`crate::control::rollback`] guard) can move traffic off WebSocket (and back) without dropping
//! a session; a reload reverts every automatic rollback to the configured transport.
//! `[[client_keys]]` is replaced whole for the next request (a session under a key that is gone
//! is refused at its next turn). The client listener's TLS certificate and key are read again on
//! every reload and serve the connections accepted from then on (open sessions keep theirs).
//! Every other setting needs a restart; a reload names the sections it left alone instead of
//! half-applying them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::config::{Config, Transport};
use crate::net::tls_server::{self, ListenerTlsError, SharedListenerTls};
use crate::oauth::OAuthRegistry;
use crate::shard::auth::SharedKeys;
use crate::shard::canary::CanarySlot;

/// The settings shards read live. Shared by every shard; written by a reload and by the
/// automatic rollback.
pub struct LiveSettings {
    force_http: AtomicBool,
    /// Per account (in config order): `true` when configured `transport = "http"`.
    account_http: Box<[AtomicBool]>,
    /// Per account: the share of sessions (percent) that take WebSocket.
    ws_percent: Box<[AtomicU8]>,
    /// Per account: `true` once the automatic rollback moved it to HTTP (until a reload).
    rolled_back: Box<[AtomicBool]>,
    /// Reloads applied so far: the rollback guard forgets its window when this moves.
    reloads: AtomicU64,
    /// The client key table.
    pub keys: Arc<SharedKeys>,
    /// The client listener's TLS configuration, when it speaks TLS.
    pub tls: Option<Arc<SharedListenerTls>>,
    /// OAuth accounts' tokens, replaced by the refresher and read by shards at every dial.
    pub oauth: Arc<OAuthRegistry>,
}

impl LiveSettings {
    /// The settings as `config` sets them; fails when its listener TLS files do not load.
    pub fn new(config: &Config) -> Result<LiveSettings, ListenerTlsError> {
        let tls = match &config.server.tls {
            Some(files) => Some(Arc::new(SharedListenerTls::load(files)?)),
            None => None,
        };
        Ok(LiveSettings {
            force_http: AtomicBool::new(config.upstream.force_http),
            account_http: config
                .accounts
                .iter()
                .map(|a| AtomicBool::new(a.transport == Transport::Http))
                .collect(),
            ws_percent: config
                .accounts
                .iter()
                .map(|a| AtomicU8::new(a.ws_canary_percent))
                .collect(),
            rolled_back: config
                .accounts
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            reloads: AtomicU64::new(0),
            keys: Arc::new(SharedKeys::new(&config.client_keys)),
            tls,
            oauth: Arc::new(OAuthRegistry::new(config)),
        })
    }

    /// `true` when account `index`'s requests must go over HTTP/SSE for every session: by
    /// configuration (its own `transport` or the global `force_http`) or by an automatic
    /// rollback.
    pub fn account_forced_http(&self, index: usize) -> bool {
        let set =
            |flags: &[AtomicBool]| flags.get(index).is_some_and(|f| f.load(Ordering::Relaxed));
        self.force_http.load(Ordering::Relaxed) || set(&self.account_http) || set(&self.rolled_back)
    }

    /// `true` when the session in canary slot `slot` may take account `index`'s WebSocket
    /// transport: the account is not forced to HTTP and the slot is within its
    /// `ws_canary_percent`.
    pub fn ws_allowed(&self, index: usize, slot: CanarySlot) -> bool {
        !self.account_forced_http(index) && slot.takes_ws(self.ws_percent(index))
    }

    /// The share of account `index`'s sessions (percent) that take WebSocket now: its
    /// `ws_canary_percent`, or 0 while it is forced to HTTP (the effective transport gauge).
    pub fn effective_ws_percent(&self, index: usize) -> u8 {
        if self.account_forced_http(index) {
            0
        } else {
            self.ws_percent(index)
        }
    }

    fn ws_percent(&self, index: usize) -> u8 {
        self.ws_percent
            .get(index)
            .map_or(100, |p| p.load(Ordering::Relaxed))
    }

    /// Moves account `index` to HTTP until the next reload; `false` when it already was.
    pub fn roll_back(&self, index: usize) -> bool {
        self.rolled_back
            .get(index)
            .is_some_and(|f| !f.swap(true, Ordering::Relaxed))
    }

    /// `true` while account `index` is rolled back to HTTP by the automatic rollback.
    pub fn rolled_back(&self, index: usize) -> bool {
        self.rolled_back
            .get(index)
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// How many reloads were applied: a change tells the rollback guard its rollbacks were
    /// reverted.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Acquire)
    }

    fn store(&self, config: &Config) {
        self.force_http
            .store(config.upstream.force_http, Ordering::Relaxed);
        for (i, account) in config.accounts.iter().enumerate() {
            if let Some(flag) = self.account_http.get(i) {
                flag.store(account.transport == Transport::Http, Ordering::Relaxed);
            }
            if let Some(p) = self.ws_percent.get(i) {
                p.store(account.ws_canary_percent, Ordering::Relaxed);
            }
            if let Some(r) = self.rolled_back.get(i) {
                r.store(false, Ordering::Relaxed);
            }
        }
        self.reloads.fetch_add(1, Ordering::Release);
    }
}

/// Why a reload was refused as a whole (nothing was applied).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The account list changed: ids or order differ, which needs a restart (shards hold per-account
    /// pools and budgets).
    #[error("the account list changed (ids or order); restart to apply it")]
    AccountsChanged,
    /// The listener's new certificate or key did not load; the one in force stays.
    #[error(transparent)]
    ListenerTls(#[from] ListenerTlsError),
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Switches that changed, e.g. `force_http=true`, `accounts.a1.transport=http`.
    pub applied: Vec<String>,
    /// Sections that differ but only take effect at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// Applies the live part of `new` over `current` (the config in effect) to `live`, and
/// returns what changed; `current` becomes what is now in effect.
pub fn apply(
    current: &mut Config,
    new: &Config,
    live: &LiveSettings,
) -> Result<ReloadReport, ReloadError> {
    let same_accounts = current.accounts.len() == new.accounts.len()
        && current
            .accounts
            .iter()
            .zip(&new.accounts)
            .all(|(a, b)| a.id == b.id);
    if !same_accounts {
        return Err(ReloadError::AccountsChanged);
    }
    // Loaded before anything is applied, so a bad file refuses the reload whole. Turning TLS on
    // or off needs a restart (the `server` section is reported as such).
    let tls = match (&live.tls, &new.server.tls, &current.server.tls) {
        (Some(shared), Some(files), Some(_)) => Some((shared, tls_server::server_config(files)?)),
        _ => None,
    };
    let mut report = ReloadReport::default();
    if let Some((shared, config)) = tls {
        shared.replace(config);
        report.applied.push("server.tls_cert".into());
    }
    if current.upstream.force_http != new.upstream.force_http {
        report
            .applied
            .push(format!("force_http={}", new.upstream.force_http));
    }
    for (i, (old, next)) in current.accounts.iter().zip(&new.accounts).enumerate() {
        if old.transport != next.transport {
            report.applied.push(format!(
                "accounts.{}.transport={}",
                next.id,
                transport_name(next.transport)
            ));
        }
        if old.ws_canary_percent != next.ws_canary_percent {
            report.applied.push(format!(
                "accounts.{}.ws_canary_percent={}",
                next.id, next.ws_canary_percent
            ));
        }
        if live.rolled_back(i) {
            report
                .applied
                .push(format!("accounts.{}.rollback_reverted", next.id));
        }
    }
    if current.client_keys != new.client_keys {
        report.applied.push(keys_change(current, new));
        live.keys.replace(&new.client_keys);
    }
    report.needs_restart = restart_only_differences(current, new);
    live.store(new);
    copy_live(current, new);
    Ok(report)
}

/// `client_keys: 3 (added: a, b; removed: c; changed: d)`, by key id (never the key).
fn keys_change(current: &Config, new: &Config) -> String {
    let ids = |c: &Config| -> Vec<String> { c.client_keys.iter().map(|k| k.id.clone()).collect() };
    let (before, after) = (ids(current), ids(new));
    let added: Vec<&str> = after
        .iter()
        .filter(|id| !before.contains(id))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = before
        .iter()
        .filter(|id| !after.contains(id))
        .map(String::as_str)
        .collect();
    let changed: Vec<&str> = new
        .client_keys
        .iter()
        .filter(|k| current.client_keys.iter().any(|o| o.id == k.id && o != *k))
        .map(|k| k.id.as_str())
        .collect();
    let mut parts = Vec::new();
    for (what, list) in [("added", added), ("removed", removed), ("changed", changed)] {
        if !list.is_empty() {
            parts.push(format!("{what}: {}", list.join(", ")));
        }
    }
    format!(
        "client_keys: {} ({})",
        new.client_keys.len(),
        parts.join("; ")
    )
}

/// Copies the settings a reload applies live from `src` into `dst` (same account list): the one
/// list of them, besides [`LiveSettings`] itself.
fn copy_live(dst: &mut Config, src: &Config) {
    dst.upstream.force_http = src.upstream.force_http;
    for (d, s) in dst.accounts.iter_mut().zip(&src.accounts) {
        d.transport = s.transport;
        d.ws_canary_percent = s.ws_canary_percent;
    }
    dst.client_keys = src.client_keys.clone();
    if dst.server.tls.is_some() && src.server.tls.is_some() {
        dst.server.tls = src.server.tls.clone();
    }
}

/// The sections of `new` that differ from `current` beyond the live settings.
fn restart_only_differences(current: &Config, new: &Config) -> Vec<&'static str> {
    let mut masked = new.clone();
    copy_live(&mut masked, current);
    let sections = [
        ("server", masked.server != current.server),
        ("upstream", masked.upstream != current.upstream),
        ("accounts", masked.accounts != current.accounts),
        ("log", masked.log != current.log),
        ("state", masked.state != current.state),
        ("usage", masked.usage != current.usage),
        ("rollback", masked.rollback != current.rollback),
    ];
    sections
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Ws => "ws",
        Transport::Http => "http",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(force_http: bool, second_transport: &str, shards: usize) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshards = {shards}\n\
             [upstream]\nforce_http = {force_http}\n\
             [[client_keys]]\nkey = \"sk-gw\"\nid = \"k\"\n\
             [[accounts]]\nid = \"a0\"\nbase_url = \"http://127.0.0.1:1\"\napi_key = \"sk-0\"\n\
             [[accounts]]\nid = \"a1\"\nbase_url = \"http://127.0.0.1:2\"\napi_key = \"sk-1\"\ntransport = \"{second_transport}\"\n\
             [usage]\npath = \"/var/lib/shardgate/usage.jsonl\"\n"
        );
        Config::parse(&text, &|_| None).expect("config")
    }

    #[test]
    fn switches_follow_the_reloaded_config_and_other_changes_are_named() {
        let mut current = config(false, "ws", 1);
        let switches = LiveSettings::new(&current).unwrap();
        assert!(!switches.account_forced_http(0) && !switches.account_forced_http(1));

        let report = apply(&mut current, &config(false, "http", 2), &switches).unwrap();
        assert_eq!(report.applied, vec!["accounts.a1.transport=http"]);
        assert_eq!(report.needs_restart, vec!["server"]);
        assert!(!switches.account_forced_http(0) && switches.account_forced_http(1));
        assert_eq!(
            current.server.shards, 1,
            "restart-only settings stay as started"
        );

        let report = apply(&mut current, &config(true, "http", 1), &switches).unwrap();
        assert_eq!(report.applied, vec!["force_http=true"]);
        assert!(report.needs_restart.is_empty());
        assert!(switches.account_forced_http(0));

        let report = apply(&mut current, &config(false, "ws", 1), &switches).unwrap();
        assert_eq!(
            report.applied,
            vec!["force_http=false", "accounts.a1.transport=ws"]
        );
        assert!(!switches.account_forced_http(0) && !switches.account_forced_http(1));
        assert!(
            !switches.account_forced_http(7),
            "unknown index: not forced"
        );
    }

    #[test]
    fn a_changed_account_list_is_refused_whole() {
        let mut current = config(false, "ws", 1);
        let switches = LiveSettings::new(&current).unwrap();
        let mut fewer = config(true, "http", 1);
        fewer.accounts.pop();
        assert!(matches!(
            apply(&mut current, &fewer, &switches),
            Err(ReloadError::AccountsChanged)
        ));
        assert!(!switches.account_forced_http(0), "nothing applied");
        assert!(!current.upstream.force_http);
    }

    #[test]
    fn client_keys_are_replaced_and_named_by_id_only() {
        use crate::config::{ClientKey, Secret};
        use crate::shard::auth::ShardKeys;
        let mut current = config(false, "ws", 1);
        let live = LiveSettings::new(&current).unwrap();
        let shard = ShardKeys::new(live.keys.clone());
        assert!(shard.authenticate(b"sk-gw").is_some());

        let mut next = current.clone();
        next.client_keys[0].key = Secret::new("sk-gw-rotated".into());
        next.client_keys.push(ClientKey {
            id: "new".into(),
            key: Secret::new("sk-new".into()),
            group: "default".into(),
        });
        let report = apply(&mut current, &next, &live).unwrap();
        assert_eq!(
            report.applied,
            vec!["client_keys: 2 (added: new; changed: k)"]
        );
        assert!(report.needs_restart.is_empty());
        assert!(
            !format!("{report:?}").contains("sk-"),
            "no key in the report"
        );
        assert!(
            shard.authenticate(b"sk-gw").is_none(),
            "the old key is refused"
        );
        assert_eq!(
            shard.authenticate(b"sk-gw-rotated").unwrap().key_id,
            "k".into()
        );
        assert_eq!(shard.authenticate(b"sk-new").unwrap().key_id, "new".into());

        let mut fewer = next.clone();
        fewer.client_keys.pop();
        fewer.accounts.pop();
        assert!(apply(&mut current, &fewer, &live).is_err());
        assert!(
            shard.authenticate(b"sk-new").is_some(),
            "a refused reload changes no key"
        );
    }
}
