//! `[[accounts]]`: the upstream accounts sessions are spread over.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::endpoint::Endpoint;
use super::oauth::{self, OAuthConfig, RawOAuth};
use super::secret::{optional_secret, secret, Secret};
use super::{invalid, ConfigError};
use crate::net::proxy::ProxyUrl;

/// How requests for an account travel upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket mode (default).
    Ws,
    /// HTTP/SSE.
    Http,
}

/// `[[accounts]]`: one upstream account.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// Stable name, used in logs, stats and usage records.
    pub id: String,
    /// The client group it serves.
    pub group: String,
    /// Parsed `base_url`.
    pub endpoint: Endpoint,
    /// The account's API key.
    pub api_key: Secret,
    /// Upstream connection budget for the whole process, split over the shards.
    pub max_conns: usize,
    /// Extra trusted root certificates (PEM), for upstreams with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Egress proxy every connection to this account goes through (HTTP CONNECT or SOCKS5).
    pub proxy: Option<ProxyUrl>,
    /// How requests travel upstream.
    pub transport: Transport,
    /// Share of sessions (percent, 0–100) that take WebSocket when `transport` is `ws`; the
    /// rest go over HTTP/SSE (the WebSocket canary). 100 by default.
    pub ws_canary_percent: u8,
    /// Client model → upstream model.
    pub model_map: HashMap<String, String>,
    /// Models it serves under their own name, listed by `GET /v1/models` (with the client-side
    /// names of `model_map`).
    pub models: Vec<String>,
    /// How the account authenticates (`api_key` by default). Only kinds known to support
    /// WebSocket mode use it; any other kind goes over HTTP/SSE.
    pub auth: String,
    /// The OAuth tokens and endpoints of a `chatgpt_oauth` account (its `api_key` is then
    /// the configured access token, or empty).
    pub oauth: Option<OAuthConfig>,
}

/// The account auth kinds known to support the Responses WebSocket mode.
pub const WS_AUTH_KINDS: &[&str] = &["api_key", oauth::AUTH_KIND];

impl Account {
    /// `true` when the account's auth kind is known to support WebSocket mode.
    pub fn auth_supports_ws(&self) -> bool {
        WS_AUTH_KINDS.contains(&self.auth.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    id: String,
    group: Option<String>,
    base_url: Option<String>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    max_conns: Option<usize>,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
    proxy_env: Option<String>,
    transport: Option<Transport>,
    ws_canary_percent: Option<u64>,
    #[serde(default)]
    model_map: HashMap<String, String>,
    #[serde(default)]
    models: Vec<String>,
    auth: Option<String>,
    oauth: Option<RawOAuth>,
}

/// `[[accounts]]` checked: ids unique, URLs and keys usable, at least one account.
pub(super) fn validate(
    raw: Vec<RawAccount>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Account>, ConfigError> {
    let mut accounts: Vec<Account> = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        let at = format!("accounts[{i}]");
        if a.id.is_empty() || accounts.iter().any(|x| x.id == a.id) {
            return Err(invalid(format!("{at}.id"), "must be non-empty and unique"));
        }
        let auth = match a.auth {
            Some(kind) if kind.trim().is_empty() => {
                return Err(invalid(format!("{at}.auth"), "must not be empty"))
            }
            Some(kind) => kind,
            None => "api_key".into(),
        };
        let oauth = oauth::for_account(&at, &a.id, &auth, a.oauth, env)?;
        let default_base = match oauth {
            Some(_) => oauth::DEFAULT_BASE_URL,
            None => "https://api.openai.com/v1",
        };
        let base_url = a.base_url.unwrap_or_else(|| default_base.into());
        let endpoint =
            Endpoint::parse(&base_url).map_err(|r| invalid(format!("{at}.base_url"), r))?;
        let api_key = match &oauth {
            Some(o) if a.api_key.is_none() && a.api_key_env.is_none() => Secret::new(
                o.access_token
                    .as_ref()
                    .map(|t| t.expose().to_string())
                    .unwrap_or_default(),
            ),
            Some(_) => {
                return Err(invalid(
                    format!("{at}.api_key"),
                    "not used by a chatgpt_oauth account (its tokens go in [accounts.oauth])",
                ))
            }
            None => secret(
                &format!("{at}.api_key"),
                a.api_key,
                &format!("{at}.api_key_env"),
                a.api_key_env,
                env,
            )?,
        };
        let max_conns = a.max_conns.unwrap_or(64);
        if max_conns == 0 {
            return Err(invalid(format!("{at}.max_conns"), "must be at least 1"));
        }
        if let Some(ca) = &a.ca_file {
            if !ca.is_file() {
                return Err(invalid(
                    format!("{at}.ca_file"),
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        let proxy = optional_secret(
            &format!("{at}.proxy"),
            a.proxy,
            &format!("{at}.proxy_env"),
            a.proxy_env,
            env,
        )?
        .map(|url| ProxyUrl::parse(url.expose()))
        .transpose()
        .map_err(|e| invalid(format!("{at}.proxy"), e.to_string()))?;
        let ws_canary_percent = match a.ws_canary_percent.unwrap_or(100) {
            p @ 0..=100 => p as u8,
            _ => {
                return Err(invalid(
                    format!("{at}.ws_canary_percent"),
                    "must be between 0 and 100",
                ))
            }
        };
        accounts.push(Account {
            id: a.id,
            group: a.group.unwrap_or_else(|| "default".into()),
            endpoint,
            api_key,
            max_conns,
            ca_file: a.ca_file,
            proxy,
            transport: a.transport.unwrap_or(Transport::Ws),
            ws_canary_percent,
            model_map: a.model_map,
            models: a.models,
            auth,
            oauth,
        });
    }
    if accounts.is_empty() {
        return Err(invalid("accounts", "at least one account is required"));
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{no_env, MINIMAL};
    use crate::config::Config;
    use crate::net::proxy::ProxyKind;

    #[test]
    fn proxy_comes_inline_or_from_the_environment_and_its_errors_hide_it() {
        let text = format!("{MINIMAL}proxy = \"socks5h://alice:s3cret@127.0.0.1:1080\"\n");
        let c = Config::parse(&text, &no_env).unwrap();
        let proxy = c.accounts[0].proxy.as_ref().unwrap();
        assert_eq!(
            proxy.kind,
            ProxyKind::Socks5 {
                proxy_resolves: true
            }
        );
        assert!(!format!("{c:?}").contains("s3cret"));

        let text = format!("{MINIMAL}proxy_env = \"EGRESS\"\n");
        let env = |name: &str| (name == "EGRESS").then(|| "http://bob:pw@proxy:3128".to_string());
        let c = Config::parse(&text, &env).unwrap();
        assert_eq!(c.accounts[0].proxy.as_ref().unwrap().port, 3128);
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("accounts[0].proxy_env"), "{err}");

        let text = format!("{MINIMAL}proxy = \"ftp://alice:s3cret@h:1\"\n");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(
            err.contains("accounts[0].proxy") && !err.contains("s3cret"),
            "{err}"
        );
        let text = format!("{MINIMAL}proxy = \"http://a:b@h:1\"\nproxy_env = \"EGRESS\"\n");
        assert!(Config::parse(&text, &env).is_err());
    }
    #[test]
    fn unknown_auth_kind_is_accepted_but_not_for_websocket() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert!(c.accounts[0].auth_supports_ws());
        let text = format!("{MINIMAL}auth = \"some_future_kind\"\n");
        let c = Config::parse(&text, &no_env).unwrap();
        assert_eq!(c.accounts[0].auth, "some_future_kind");
        assert!(!c.accounts[0].auth_supports_ws());
        let text = format!("{MINIMAL}auth = \" \"\n");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("accounts[0].auth"), "{err}");
    }

    #[test]
    fn the_canary_share_defaults_to_every_session_and_is_bounded() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(c.accounts[0].ws_canary_percent, 100);
        let text = format!("{MINIMAL}ws_canary_percent = 10\n");
        assert_eq!(
            Config::parse(&text, &no_env).unwrap().accounts[0].ws_canary_percent,
            10
        );
        let text = format!("{MINIMAL}ws_canary_percent = 101\n");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("accounts[0].ws_canary_percent"), "{err}");
    }
}
