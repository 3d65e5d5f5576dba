//! The connection tasks of one shard, so that stopping the shard ends them (and closes their
//! sockets) instead of leaving them behind with the executor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{abortable, AbortHandle};

use crate::runtime;

/// How long a stopping shard waits for its aborted tasks to drop their state.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Poll interval while draining.
const DRAIN_TICK: Duration = Duration::from_millis(1);

/// Abort handles of the shard's live connection tasks.
#[derive(Default)]
pub struct Tasks {
    next_id: Cell<u64>,
    live: RefCell<HashMap<u64, AbortHandle>>,
}

impl Tasks {
    /// Spawns `fut` on the current shard, tracked until it finishes or is aborted.
    pub fn spawn(self: &Rc<Self>, fut: impl Future<Output = ()> + 'static) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (fut, handle) = abortable(fut);
        self.live.borrow_mut().insert(id, handle);
        let tasks = Rc::clone(self);
        runtime::spawn_local(async move {
            let _ = fut.await;
            tasks.live.borrow_mut().remove(&id);
        });
    }

    /// Aborts every live task and waits (boundedly) until they have all dropped their futures.
    pub async fn abort_all(&self) {
        for handle in self.live.borrow().values() {
            handle.abort();
        }
        let mut waited = Duration::ZERO;
        while !self.live.borrow().is_empty() && waited < DRAIN_LIMIT {
            runtime::sleep(DRAIN_TICK).await;
            waited += DRAIN_TICK;
        }
        // One more turn of the reactor, so that cancellations of in-flight socket operations
        // are submitted before the executor goes away.
        runtime::sleep(DRAIN_TICK).await;
    }
}
