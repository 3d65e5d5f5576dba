//! ChatGPT/Codex OAuth in the mock: the token endpoint (`POST /oauth/token`,
//! `grant_type=refresh_token`) and the check every Responses request passes when the mock is
//! started with [`MockOAuth`]: a bearer that is a live access token it issued, and the account's
//! `chatgpt-account-id`. Refresh tokens are single-use, as OpenAI's are: a second use is
//! refused with `invalid_grant`.

use sonic_rs::JsonValueTrait;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::state::Shared;
use crate::protocol::http1::RequestHead;

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";

/// What a mock acting as the ChatGPT backend is started with.
#[derive(Clone, Debug)]
pub struct MockOAuth {
    /// The `chatgpt-account-id` every request must carry.
    pub account_id: String,
    /// The refresh token the account starts with.
    pub refresh_token: String,
    /// An access token valid from the start (for `lifetime`), if any.
    pub access_token: Option<String>,
    /// How long an issued access token lives (`expires_in`, whole seconds, at least 1).
    pub lifetime: Duration,
}

/// The tokens a mock has issued, and what its token endpoint is scripted to do.
#[derive(Default)]
pub struct OAuthState {
    access: HashMap<String, Instant>,
    refresh: HashSet<String>,
    issued: u64,
    fail_next: u32,
}

impl OAuthState {
    /// The state of a mock started with `cfg`.
    pub fn new(cfg: &MockOAuth) -> OAuthState {
        let mut state = OAuthState::default();
        state.refresh.insert(cfg.refresh_token.clone());
        if let Some(access) = &cfg.access_token {
            state
                .access
                .insert(access.clone(), Instant::now() + cfg.lifetime);
        }
        state
    }

    /// Makes the next `n` refreshes fail with 400 `invalid_grant` (the refresh token is kept).
    pub fn fail_refreshes(&mut self, n: u32) {
        self.fail_next = n;
    }

    /// Revokes every access token issued so far: the next request with one gets a 401.
    pub fn revoke_access_tokens(&mut self) {
        self.access.clear();
    }
}

/// `true` when `head` may use the Responses API: always when the mock has no OAuth, else a
/// live access token and the right account id.
pub fn authorized(head: &RequestHead, shared: &Shared) -> bool {
    let Some(cfg) = &shared.cfg.oauth else {
        return true;
    };
    let account_ok = head.header_str("chatgpt-account-id").map(str::trim) == Some(&cfg.account_id);
    let token = head
        .header_str("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let live = shared.oauth(|o| {
        o.access
            .get(token)
            .is_some_and(|expiry| Instant::now() < *expiry)
    });
    if !(account_ok && live) {
        shared.record(|s| s.oauth_rejections += 1);
    }
    account_ok && live
}

/// Answers a token request: status and JSON body.
pub fn token(body: &[u8], shared: &Shared) -> (u16, String) {
    let Some(cfg) = &shared.cfg.oauth else {
        return (404, error("not_found"));
    };
    let field = |name: &str| {
        sonic_rs::get_from_slice(body, [name])
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    if field("grant_type") != "refresh_token" || field("client_id").is_empty() {
        shared.record(|s| s.oauth_refresh_failures += 1);
        return (400, error("invalid_request"));
    }
    let presented = field("refresh_token");
    let answer = shared.oauth(|o| {
        if o.fail_next > 0 {
            o.fail_next -= 1;
            return None;
        }
        if !o.refresh.remove(&presented) {
            return None;
        }
        o.issued += 1;
        let n = o.issued;
        let salt = fastrand::u64(..);
        let access = format!("mock-at-{n}-{salt:016x}");
        let refresh = format!("mock-rt-{n}-{salt:016x}");
        o.access
            .insert(access.clone(), Instant::now() + cfg.lifetime);
        o.refresh.insert(refresh.clone());
        Some((access, refresh))
    });
    match answer {
        Some((access, refresh)) => {
            shared.record(|s| s.oauth_refreshes += 1);
            let body = sonic_rs::json!({
                "access_token": access,
                "refresh_token": refresh,
                "id_token": "mock-id-token",
                "token_type": "Bearer",
                "expires_in": cfg.lifetime.as_secs().max(1),
            });
            (200, body.to_string())
        }
        None => {
            shared.record(|s| s.oauth_refresh_failures += 1);
            (400, error("invalid_grant"))
        }
    }
}

fn error(code: &str) -> String {
    sonic_rs::json!({ "error": code, "error_description": "refused by the mock" }).to_string()
}
