//! What a turn does when the failure table (`shard/failure/`) decides that upstream refused an
//! OAuth account's token (a 401 before the client saw anything): it asks the refresher for a
//! newer token (a message; the shard awaits the one-shot answer without blocking) and retries
//! once on the same account with it, or, when the refresh failed (the account is then out of
//! rotation), moves to another account. A second 401 in the same turn is handled like any
//! other upstream refusal.

use std::time::Duration;

use super::pool::Pool;
use super::Shard;
use crate::runtime;

/// Longest a turn waits for the refresher (its token request has a 20 s deadline).
const REFRESH_WAIT: Duration = Duration::from_secs(25);

/// What the turn does next after a 401 on an OAuth account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUnauthorized {
    /// A newer token is in force: retry once on the same account, on a fresh connection.
    Retry,
    /// The refresh failed: try another account.
    MoveOn,
}

/// Asks the refresher for a token newer than the one `pool`'s account used (the failure table
/// decided [`Action::RefreshToken`](super::failure::Action::RefreshToken)) and says what the
/// turn does next.
pub async fn refresh(shard: &Shard, pool: &Pool) -> AfterUnauthorized {
    let answer = match pool.account.credential_generation() {
        Some(seen) => match shard.live.oauth.ask_refresh(pool.account.index, seen) {
            Some(answer) => runtime::timeout(REFRESH_WAIT, answer).await,
            None => None,
        },
        None => None,
    };
    let next = if matches!(answer, Some(Ok(true))) {
        AfterUnauthorized::Retry
    } else {
        AfterUnauthorized::MoveOn
    };
    let label = match next {
        AfterUnauthorized::Retry => "retried",
        AfterUnauthorized::MoveOn => "moved",
    };
    shard.counters.bump_labeled("oauth_unauthorized", label);
    tracing::info!(
        account = %pool.account.config.id,
        next = label,
        "upstream refused the oauth access token (401)"
    );
    next
}
