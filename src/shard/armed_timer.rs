//! A timer that is polled only when it may have fired. glommio's timer takes itself out of the
//! reactor's timer map and puts itself back (two B-tree and two hash-map operations, a waker
//! cloned and one dropped) on every poll, and the relay polls its silence timer once per batch
//! of events: once armed for the polling task, [`ArmedTimer`] answers `Pending` from one clock
//! read until its instant has come.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// `sleep`, a timer for `after` from now, polled only while it is not armed for the polling
/// task or once its instant has come (why it exists: the module doc).
pub struct ArmedTimer<F> {
    sleep: F,
    /// When `sleep` fires at the earliest (it reads the clock after this was set).
    when: Instant,
    /// The waker `sleep` last registered, if it was polled and is pending.
    armed: Option<Waker>,
}

impl<F: Future> ArmedTimer<F> {
    /// Wraps `sleep`, a timer for `after` built just now (e.g. `runtime::sleep(after)`).
    pub fn new(after: Duration, sleep: F) -> Self {
        ArmedTimer {
            sleep,
            when: Instant::now() + after,
            armed: None,
        }
    }
}

impl<F: Future> Future for ArmedTimer<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `sleep` is pinned structurally: it is never moved out of `self`, and
        // `ArmedTimer` has no `Drop` and is `Unpin` only when `F` is.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(waker) = &this.armed {
            if waker.will_wake(cx.waker()) && Instant::now() < this.when {
                return Poll::Pending;
            }
        }
        // SAFETY: as above.
        let sleep = unsafe { Pin::new_unchecked(&mut this.sleep) };
        match sleep.poll(cx) {
            Poll::Ready(out) => {
                this.armed = None;
                Poll::Ready(out)
            }
            Poll::Pending => {
                match &mut this.armed {
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => this.armed = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A future that counts its polls and is ready once `ready` is set.
    struct Counted {
        polls: Rc<Cell<u32>>,
        ready: Rc<Cell<bool>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            if self.ready.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn counted() -> (Counted, Rc<Cell<u32>>, Rc<Cell<bool>>) {
        let (polls, ready) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
        let inner = Counted {
            polls: polls.clone(),
            ready: ready.clone(),
        };
        (inner, polls, ready)
    }

    #[test]
    fn an_armed_timer_is_not_polled_again_by_the_same_task_before_its_instant() {
        let (inner, polls, _) = counted();
        let mut timer = std::pin::pin!(ArmedTimer::new(Duration::from_secs(3600), inner));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(timer.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.get(), 1);
    }

    #[test]
    fn another_waker_polls_the_timer_again() {
        let (inner, polls, _) = counted();
        let mut timer = std::pin::pin!(ArmedTimer::new(Duration::from_secs(3600), inner));
        let noop = futures_util::task::noop_waker();
        assert!(timer
            .as_mut()
            .poll(&mut Context::from_waker(&noop))
            .is_pending());
        let other = futures_util::task::waker(std::sync::Arc::new(Wake));
        assert!(timer
            .as_mut()
            .poll(&mut Context::from_waker(&other))
            .is_pending());
        assert_eq!(polls.get(), 2);
    }

    #[test]
    fn once_its_instant_has_come_the_timer_is_polled_and_fires() {
        let (inner, polls, ready) = counted();
        let mut timer = std::pin::pin!(ArmedTimer::new(Duration::ZERO, inner));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(timer.as_mut().poll(&mut cx).is_pending());
        ready.set(true);
        assert!(timer.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.get(), 2);
    }

    #[test]
    fn a_glommio_sleep_under_it_still_fires() {
        let after = Duration::from_millis(20);
        let waited = crate::runtime::spawn_executor("armed-timer-test", None, move || async move {
            let started = Instant::now();
            ArmedTimer::new(after, crate::runtime::sleep(after)).await;
            started.elapsed()
        })
        .expect("executor starts")
        .join()
        .expect("executor runs");
        assert!(waited >= after, "{waited:?}");
    }

    struct Wake;

    impl futures_util::task::ArcWake for Wake {
        fn wake_by_ref(_: &std::sync::Arc<Self>) {}
    }
}
