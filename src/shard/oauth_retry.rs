//! What a turn does when upstream refuses an OAuth account's token with a 401 before the
//! client saw anything: it asks the refresher for a newer token (a message; the shard awaits
//! the one-shot answer without blocking) and retries once on the same account with it, or,
//! when the refresh failed (the account is then out of rotation), moves to another account.
//! A second 401 in the same turn is handled like any other upstream refusal.

use std::time::Duration;

use super::failure::{Failure, UPSTREAM_UNAUTHORIZED};
use super::pool::Pool;
use super::relay::Outcome;
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

/// `true` when `failure` is upstream refusing the credentials (401 on the upgrade or the
/// request).
fn is_unauthorized(failure: &Failure) -> bool {
    failure.error.status == 401 || failure.error.code == UPSTREAM_UNAUTHORIZED
}

/// The next step when `outcome` is a 401 on an OAuth account that nothing was relayed for,
/// the first in this turn (`retried` records it); `None` otherwise.
pub async fn after_attempt(
    shard: &Shard,
    pool: &Pool,
    outcome: &Outcome,
    retried: &mut bool,
) -> Option<AfterUnauthorized> {
    let Outcome::Failed {
        relayed: false,
        failure,
    } = outcome
    else {
        return None;
    };
    let seen = pool.account.credential_generation()?;
    if !is_unauthorized(failure) || *retried {
        return None;
    }
    *retried = true;
    let answer = match shard.live.oauth.ask_refresh(pool.account.index, seen) {
        Some(answer) => runtime::timeout(REFRESH_WAIT, answer).await,
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
    Some(next)
}
