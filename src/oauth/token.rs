//! The current credential of one OAuth account, shared by the refresher (the only writer) and
//! the shards (readers). Shards keep their own copy and take the shared one again only when the
//! generation moved, so reading the token on a dial touches no lock in the steady state — the
//! same pattern as the client key table (`shard::auth::SharedKeys`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::config::Secret;

/// One credential: what a dial sends, and what redaction must hide.
pub struct Credential {
    /// `Authorization: Bearer <access token>`, marked sensitive so it never prints.
    pub authorization: HeaderValue,
    /// The access token.
    pub access: Secret,
    /// The refresh token in force (never sent upstream; kept so redaction covers it).
    pub refresh: Secret,
}

impl Credential {
    /// The credential of `access` (empty when none is known yet: upstream refuses it and a
    /// refresh follows) and `refresh`.
    pub fn new(access: Option<&Secret>, refresh: &Secret) -> Credential {
        let access = access.map(|a| a.expose()).unwrap_or_default();
        let mut authorization = HeaderValue::from_str(&format!("Bearer {access}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        authorization.set_sensitive(true);
        Credential {
            authorization,
            access: Secret::new(access.to_string()),
            refresh: Secret::new(refresh.expose().to_string()),
        }
    }
}

/// An account's credential in force, its health and its refresh counters.
pub struct AccountToken {
    generation: AtomicU64,
    current: Mutex<Arc<Credential>>,
    failed: AtomicBool,
    /// Refreshes that succeeded.
    pub refreshes: AtomicU64,
    /// Refreshes that failed.
    pub refresh_failures: AtomicU64,
    /// Rotated tokens that could not be written to the state file.
    pub state_write_failures: AtomicU64,
}

impl AccountToken {
    /// The token of an account as configured.
    pub fn new(credential: Credential) -> AccountToken {
        AccountToken {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(credential)),
            failed: AtomicBool::new(false),
            refreshes: AtomicU64::new(0),
            refresh_failures: AtomicU64::new(0),
            state_write_failures: AtomicU64::new(0),
        }
    }

    /// Puts `credential` in force for every shard's next dial or request, and takes the account
    /// back into rotation.
    pub fn publish(&self, credential: Credential) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(credential);
        self.generation.fetch_add(1, Ordering::Release);
        self.failed.store(false, Ordering::Release);
    }

    /// Takes the account out of rotation until a refresh succeeds.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// `true` while the account is out of rotation.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Changes with every published credential.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> (u64, Arc<Credential>) {
        let generation = self.generation();
        let credential = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (generation, credential)
    }
}

/// A shard's view of an account's token.
pub struct ShardToken {
    shared: Arc<AccountToken>,
    local: RefCell<(u64, Arc<Credential>)>,
}

impl ShardToken {
    /// A view of `shared`.
    pub fn new(shared: Arc<AccountToken>) -> ShardToken {
        let local = RefCell::new(shared.current());
        ShardToken { shared, local }
    }

    /// The credential in force, and its generation (to tell the refresher which one upstream
    /// refused).
    pub fn credential(&self) -> (u64, Arc<Credential>) {
        if self.shared.generation() != self.local.borrow().0 {
            *self.local.borrow_mut() = self.shared.current();
        }
        let local = self.local.borrow();
        (local.0, local.1.clone())
    }

    /// `false` while the account is out of rotation (its last refresh failed).
    pub fn usable(&self) -> bool {
        !self.shared.is_failed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_see_a_published_token_at_their_next_read() {
        let secret = |s: &str| Secret::new(s.into());
        let shared = Arc::new(AccountToken::new(Credential::new(
            Some(&secret("at-1")),
            &secret("rt-1"),
        )));
        let shard = ShardToken::new(shared.clone());
        let (g0, c) = shard.credential();
        assert_eq!(c.authorization.to_str().unwrap(), "Bearer at-1");
        shared.mark_failed();
        assert!(!shard.usable());
        shared.publish(Credential::new(Some(&secret("at-2")), &secret("rt-2")));
        let (g1, c) = shard.credential();
        assert_ne!(g0, g1);
        assert_eq!(c.access.expose(), "at-2");
        assert!(shard.usable());
        assert!(format!("{:?}", c.authorization).contains("Sensitive"));
    }
}
