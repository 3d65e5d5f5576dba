//! `[accounts.oauth]`: what a ChatGPT/Codex OAuth account (`auth = "chatgpt_oauth"`) is
//! configured with. Parsed here so the account section only hands the table over.

use std::path::PathBuf;

use serde::Deserialize;

use super::secret::{optional_secret, secret, Secret};
use super::{invalid, ConfigError};

/// The auth kind of a ChatGPT/Codex OAuth account.
pub const AUTH_KIND: &str = "chatgpt_oauth";

/// The upstream base of ChatGPT/Codex accounts (`…/responses` is appended).
pub const DEFAULT_BASE_URL: &str = "https://chatgpt.com/backend-api/codex";

/// OpenAI's OAuth token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";

/// The OAuth client id Codex CLI logs in with (its refresh tokens are bound to it).
pub const DEFAULT_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// `[accounts.oauth]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    access_token: Option<String>,
    access_token_env: Option<String>,
    refresh_token: Option<String>,
    refresh_token_env: Option<String>,
    chatgpt_account_id: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    state_file: Option<PathBuf>,
}

/// A validated `[accounts.oauth]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthConfig {
    /// The access token to start with, when the operator has one (else the first refresh
    /// provides it).
    pub access_token: Option<Secret>,
    /// The refresh token the account was seeded with (single-use: once rotated, the state
    /// file holds the current one).
    pub refresh_token: Secret,
    /// Sent upstream as `chatgpt-account-id`.
    pub chatgpt_account_id: String,
    /// Where refreshes are posted (`grant_type=refresh_token`).
    pub token_url: String,
    /// The OAuth client the tokens were issued to.
    pub client_id: String,
    /// Where the rotated tokens are kept across restarts (mode 0600). A relative path is
    /// relative to the config file's directory.
    pub state_file: PathBuf,
}

/// The OAuth settings of account `id` (key path `at`) of auth kind `auth`: required for
/// `chatgpt_oauth`, refused for any other kind.
pub fn for_account(
    at: &str,
    id: &str,
    auth: &str,
    raw: Option<RawOAuth>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<OAuthConfig>, ConfigError> {
    match (auth == AUTH_KIND, raw) {
        (true, Some(raw)) => validate(&format!("{at}.oauth"), id, raw, env).map(Some),
        (true, None) => Err(invalid(
            format!("{at}.oauth"),
            "required with auth = \"chatgpt_oauth\"",
        )),
        (false, Some(_)) => Err(invalid(
            format!("{at}.oauth"),
            "only for accounts with auth = \"chatgpt_oauth\"",
        )),
        (false, None) => Ok(None),
    }
}

/// Validates the table of account `id` (at key path `at`).
pub fn validate(
    at: &str,
    id: &str,
    raw: RawOAuth,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OAuthConfig, ConfigError> {
    let access_token = optional_secret(
        &format!("{at}.access_token"),
        raw.access_token,
        &format!("{at}.access_token_env"),
        raw.access_token_env,
        env,
    )?;
    let refresh_token = secret(
        &format!("{at}.refresh_token"),
        raw.refresh_token,
        &format!("{at}.refresh_token_env"),
        raw.refresh_token_env,
        env,
    )?;
    let chatgpt_account_id = match raw.chatgpt_account_id {
        Some(v) if !v.trim().is_empty() && http::HeaderValue::from_str(&v).is_ok() => v,
        Some(_) => {
            return Err(invalid(
                format!("{at}.chatgpt_account_id"),
                "must be a non-empty header value",
            ))
        }
        None => return Err(invalid(format!("{at}.chatgpt_account_id"), "required")),
    };
    for (name, token) in [
        ("access_token", &access_token),
        ("refresh_token", &Some(refresh_token.clone())),
    ] {
        if let Some(t) = token {
            if http::HeaderValue::from_str(t.expose()).is_err() {
                return Err(invalid(
                    format!("{at}.{name}"),
                    "contains characters not allowed in a header",
                ));
            }
        }
    }
    let token_url = raw.token_url.unwrap_or_else(|| DEFAULT_TOKEN_URL.into());
    super::Endpoint::parse(&token_url)
        .map_err(|reason| invalid(format!("{at}.token_url"), reason))?;
    let client_id = match raw.client_id {
        Some(v) if v.trim().is_empty() => {
            return Err(invalid(format!("{at}.client_id"), "must not be empty"))
        }
        Some(v) => v,
        None => DEFAULT_CLIENT_ID.into(),
    };
    let state_file = raw
        .state_file
        .unwrap_or_else(|| PathBuf::from(format!("{id}.oauth-state.json")));
    if state_file.as_os_str().is_empty() {
        return Err(invalid(format!("{at}.state_file"), "must not be empty"));
    }
    Ok(OAuthConfig {
        access_token,
        refresh_token,
        chatgpt_account_id,
        token_url,
        client_id,
        state_file,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
        [usage]
        path = "/var/lib/shardgate/usage.jsonl"
        [[client_keys]]
        key = "sk-gw-local"
        [[accounts]]
        id = "codex-1"
        auth = "chatgpt_oauth"
    "#;

    fn env(name: &str) -> Option<String> {
        (name == "RT").then(|| "rt-from-env".to_string())
    }

    #[test]
    fn an_oauth_account_reads_its_table_with_defaults() {
        let text = format!(
            "{BASE}[accounts.oauth]\nrefresh_token_env = \"RT\"\nchatgpt_account_id = \"acc-9\"\n"
        );
        let c = Config::parse(&text, &env).unwrap();
        let a = &c.accounts[0];
        let o = a.oauth.as_ref().unwrap();
        assert_eq!(o.refresh_token.expose(), "rt-from-env");
        assert_eq!(o.chatgpt_account_id, "acc-9");
        assert_eq!(o.token_url, super::DEFAULT_TOKEN_URL);
        assert_eq!(o.client_id, super::DEFAULT_CLIENT_ID);
        assert_eq!(o.state_file.to_str(), Some("codex-1.oauth-state.json"));
        assert_eq!(
            a.endpoint.responses_ws_url(),
            "wss://chatgpt.com/backend-api/codex/responses"
        );
        assert!(a.auth_supports_ws());
        assert_eq!(a.api_key.expose(), "");
    }

    #[test]
    fn an_oauth_account_refuses_what_it_cannot_use() {
        let cases = [
            (BASE.to_string(), "accounts[0].oauth"),
            (
                format!("{BASE}[accounts.oauth]\nrefresh_token = \"rt\"\n"),
                "accounts[0].oauth.chatgpt_account_id",
            ),
            (
                format!("{BASE}api_key = \"sk-x\"\n[accounts.oauth]\nrefresh_token = \"rt\"\nchatgpt_account_id = \"a\"\n"),
                "accounts[0].api_key",
            ),
            (
                format!("{BASE}[accounts.oauth]\nchatgpt_account_id = \"a\"\n"),
                "accounts[0].oauth.refresh_token",
            ),
            (
                format!("{BASE}[accounts.oauth]\nrefresh_token = \"rt\"\nchatgpt_account_id = \"a\"\ntoken_url = \"ftp://x\"\n"),
                "accounts[0].oauth.token_url",
            ),
            (
                BASE.replace("chatgpt_oauth", "api_key")
                    + "api_key = \"sk-x\"\n[accounts.oauth]\nrefresh_token = \"rt\"\n",
                "accounts[0].oauth",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text, &env).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
            assert!(
                !err.contains("rt-from-env") && !err.contains("sk-x"),
                "{err}"
            );
        }
    }
}
