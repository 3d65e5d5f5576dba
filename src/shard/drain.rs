//! The shard's draining flag, with a way to wait for it: sessions idle between turns close
//! with 1001 "going away" as soon as a graceful shutdown starts, instead of holding their
//! client until the executor stops.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Whether the shard drains, and who waits for it.
#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    waiters: RefCell<HashMap<u64, Waker>>,
    next_id: Cell<u64>,
}

impl Drain {
    /// `true` once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts draining and wakes every waiter.
    pub fn start(&self) {
        self.draining.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// Resolves once draining started. Holds one waker while pending; dropping it forgets it.
    pub fn started(&self) -> Started<'_> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        Started { drain: self, id }
    }
}

/// The future of [`Drain::started`].
pub struct Started<'a> {
    drain: &'a Drain,
    id: u64,
}

impl Future for Started<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.draining.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.drain.waiters.borrow_mut();
        match waiters.get_mut(&self.id) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => {
                waiters.insert(self.id, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.drain.waiters.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn waiters_wake_when_draining_starts_and_leave_nothing_behind() {
        let drain = Drain::default();
        let mut a = Box::pin(drain.started());
        let mut b = Box::pin(drain.started());
        assert!(a.as_mut().now_or_never().is_none());
        assert!(b.as_mut().now_or_never().is_none());
        drop(b);
        assert_eq!(drain.waiters.borrow().len(), 1);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert_eq!(drain.waiters.borrow().len(), 1);
        drain.start();
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(drain.is_draining());
        assert!(drain.waiters.borrow().is_empty());
    }
}
