//! Where a turn runs: the account (and, on this shard, the idle connection) its chain lives on,
//! from the driver's own memory or the response's binding, and the pool each attempt takes.

use std::rc::Rc;
use std::time::Instant;

use http::HeaderValue;

use crate::metrics::Hist;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::runtime;

use super::super::pool::{Lease, Pool};
use super::super::scheduler;
use super::super::sink::TurnError;
use super::super::sticky::{self, Affinity};
use super::{Driver, Prefer, NO_CONNECTION};

/// How often, 10 ms apart, a chained turn looks for its connection on the idle stack while the
/// connection is leased, before taking another one of the same account: a reconnecting
/// client's old session gives the connection back only once it has read its client's close.
const AFFINITY_CONN_TRIES: u32 = 3;

impl Driver {
    /// Leases the upstream connection the session's first turn will likely run on, before the
    /// client's upgrade is answered, and returns the `x-codex-turn-state` of its handshake
    /// (`[server] echo_turn_state`). The route is what the upgrade's headers tell: the account
    /// (and connection, when idle on this shard) of the session's last response when the
    /// client names a session, else the scheduler's pick. The first turn gives the lease back
    /// when it chains to a response (by its frame or the normalizer), so that it routes by that.
    pub async fn lease_ahead(&mut self) -> Option<HeaderValue> {
        let shard = self.shard.clone();
        if let Some(session) = self.session {
            let last = shard
                .sticky
                .session_last(&shard.counters, &self.identity.group, session)
                .await;
            if let Some(last) = last {
                self.route(&last).await;
            }
        }
        let lease = match self.choose_pool(&[]) {
            Some(pool) => match self.preferred_conn(&pool, false).await {
                Some(lease) => Some(lease),
                None => pool.acquire(&self.forward).await.ok(),
            },
            None => None,
        };
        self.prefer = None;
        self.routed = false;
        let mut lease = lease?;
        let pool = lease.pool().clone();
        let dial_time = lease.conn().dial_time;
        self.count_conn(&pool, lease.reused, Hist::DialWs, dial_time);
        let turn_state = lease.conn().turn_state.as_deref().cloned();
        self.lease = Some(lease);
        self.ahead = true;
        turn_state
    }

    /// Decides where the next turn, chained to `previous`, runs: from the response's binding
    /// (this shard's cache, else the state store), counted as `affinity{label}`. The next
    /// [`Driver::run`] prefers the bound account (and connection, on this shard); the caller
    /// hands the client to another shard on [`Affinity::OtherShard`] when it can.
    pub async fn route(&mut self, previous: &str) -> Affinity {
        let shard = self.shard.clone();
        let binding = shard
            .sticky
            .binding(&shard.counters, &self.identity.group, previous)
            .await;
        let affinity = sticky::affinity(binding, &shard.config.state.instance, shard.id);
        shard.counters.bump_labeled("affinity", affinity.label());
        let (account, connection) = match &affinity {
            Affinity::Unbound => (None, None),
            Affinity::ThisShard {
                account,
                connection,
            } => (
                Some(account),
                Some(*connection).filter(|c| *c != NO_CONNECTION),
            ),
            Affinity::OtherShard { account, .. } | Affinity::OtherHost { account } => {
                (Some(account), None)
            }
        };
        self.prefer = account.and_then(|id| {
            let index = self.account_index(id)?;
            Some(Prefer {
                account: index,
                connection,
            })
        });
        self.routed = true;
        affinity
    }

    /// The index of account `id` among this client's group, if it belongs to it.
    fn account_index(&self, id: &str) -> Option<usize> {
        self.shard
            .groups
            .get(&*self.identity.group)?
            .iter()
            .copied()
            .find(|i| self.shard.pools[*i].account.config.id == id)
    }

    /// Sets the turn's preferred account and connection when it chains to `previous`: from the
    /// driver's own memory when it is the last response this client got (no lookup), else from
    /// the response's binding, unless the session already routed this turn.
    pub(super) async fn route_chained(&mut self, previous: &str) {
        if std::mem::take(&mut self.ahead) {
            // A chained first turn (by its frame or by the normalizer) runs where its chain
            // lives; the clean, unused connection leased ahead goes back to the pool (where
            // that turn may take it again).
            self.release();
        }
        if self.routed || self.lease.is_some() {
            return;
        }
        match self.last_at {
            Some((account, connection)) if self.last.as_deref() == Some(previous) => {
                self.prefer = Some(Prefer {
                    account,
                    connection: Some(connection).filter(|c| *c != NO_CONNECTION),
                });
            }
            _ => {
                self.route(previous).await;
            }
        }
    }

    /// The pool for the next attempt: the session's held connection, else the account the
    /// turn's chain lives on (when it is healthy), else the scheduler's pick among untried
    /// accounts, else among all healthy ones.
    pub(super) fn choose_pool(&self, tried: &[usize]) -> Option<Rc<Pool>> {
        if let Some(lease) = &self.lease {
            let pool = lease.pool();
            if !tried.contains(&pool.account.index) {
                return Some(pool.clone());
            }
        }
        if let Some(prefer) = self.prefer {
            let pool = &self.shard.pools[prefer.account];
            if !tried.contains(&prefer.account)
                && pool.budget() > 0
                && pool.breaker.is_available(Instant::now())
                && pool.account.usable()
            {
                return Some(pool.clone());
            }
        }
        let group = &self.identity.group;
        scheduler::pick(&self.shard, group, tried).or_else(|| {
            if tried.is_empty() {
                None
            } else {
                scheduler::pick(&self.shard, group, &[])
            }
        })
    }

    pub(super) fn no_account_error(&self) -> TurnError {
        let has_accounts = self
            .shard
            .groups
            .get(&*self.identity.group)
            .is_some_and(|g| !g.is_empty());
        let message = if has_accounts {
            "every upstream account of this key's group is failing (circuit open); retry later"
        } else {
            "no upstream account is available for this key's group"
        };
        GatewayError::new(503, ErrorType::Server, "no_available_account", message).into()
    }

    /// The idle connection the turn's chain lives on, when the turn prefers one of `pool`'s
    /// (tried once per turn, never for a fresh retry). Counted as `affinity{connection_reused}`,
    /// `affinity{connection_gone}` (closed or retired) or `affinity{connection_busy}` (still held
    /// by a live session): then the turn goes on with another connection of the same account,
    /// and recovery handles a chain error.
    pub(super) async fn preferred_conn(&mut self, pool: &Rc<Pool>, fresh: bool) -> Option<Lease> {
        let prefer = self.prefer.as_mut()?;
        if prefer.account != pool.account.index {
            return None;
        }
        let id = prefer.connection.take()?;
        if fresh {
            return None;
        }
        let counters = &self.shard.counters;
        for tried in 0..AFFINITY_CONN_TRIES {
            if tried > 0 {
                runtime::sleep(std::time::Duration::from_millis(10)).await;
            }
            if let Some(lease) = pool.acquire_conn(id) {
                counters.bump_labeled("affinity", "connection_reused");
                return Some(lease);
            }
            if !pool.is_leased(id) {
                counters.bump_labeled("affinity", "connection_gone");
                return None;
            }
        }
        counters.bump_labeled("affinity", "connection_busy");
        None
    }
}
