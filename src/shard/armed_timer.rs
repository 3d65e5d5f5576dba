//! A timer that is polled only when it may have fired, and built once per task. glommio's timer
//! takes itself out of the reactor's timer map and puts itself back (two B-tree and two hash-map
//! operations, a waker cloned and one dropped) on every poll, and the relay polls its silence
//! timer once per batch of events: once armed for the polling task, [`Deadline`] answers
//! `Pending` from one clock read until its instant has come.
//!
//! A task that waits under a deadline again and again (a session between client frames, each
//! of its turns' upstream send and silence; an HTTP connection's turns) keeps one timer for its
//! life, set again for each wait (a timer built per wait was an allocation each).
//! A wait ending later than the timer is registered for leaves the timer alone; when it fires
//! early, the next poll registers it for the new instant.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The deadline a shard task waits under, over one glommio timer ([`shard_deadline`]).
pub type ShardDeadline = Deadline<crate::runtime::Timer>;

/// A [`ShardDeadline`] for a task of the current shard (built on its executor; one allocation
/// for the task's life instead of one per wait).
pub fn shard_deadline() -> ShardDeadline {
    Deadline::new(crate::runtime::Timer::new(Duration::ZERO))
}

/// A timer that can be set to fire again, `after` from now (a glommio timer, or a test double).
pub trait Rearm: Future + Unpin {
    /// Sets the timer to fire `after` from now.
    fn rearm(&mut self, after: Duration);
}

impl Rearm for crate::runtime::Timer {
    fn rearm(&mut self, after: Duration) {
        self.reset(after);
    }
}

/// A deadline moved from wait to wait over one reusable timer (why it exists: the module doc).
/// [`Deadline::wait`] ends once the instant last [`Deadline::set`] has come.
pub struct Deadline<T> {
    timer: T,
    /// When the current wait ends.
    when: Instant,
    /// The instant `timer` was last registered for; never after `when` while `armed` is set.
    fires: Instant,
    /// The waker `timer` last registered while pending for `fires`: while it is the polling
    /// task's and `fires` has not come, a poll answers `Pending` without polling the timer.
    armed: Option<Waker>,
}

impl<T: Rearm> Deadline<T> {
    /// A deadline over `timer`, set to now (set it before waiting).
    pub fn new(timer: T) -> Self {
        let now = Instant::now();
        Deadline {
            timer,
            when: now,
            fires: now,
            armed: None,
        }
    }

    /// Sets the wait to end at `when`. Later than the registered instant costs nothing now;
    /// earlier, the timer is registered again at the next poll.
    pub fn set(&mut self, when: Instant) {
        self.when = when;
        if when < self.fires {
            self.armed = None;
        }
    }

    /// Waits until the instant last set has come.
    pub fn wait(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_wait(cx))
    }

    /// Runs `fut` until the instant last set; `None` when that instant came first.
    pub fn within<'a, F: Future + 'a>(
        &'a mut self,
        fut: F,
    ) -> impl Future<Output = Option<F::Output>> + 'a {
        futures_lite::future::or(futures_util::FutureExt::map(fut, Some), async move {
            self.wait().await;
            None
        })
    }

    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.when {
            return Poll::Ready(());
        }
        let armed_here = self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if armed_here && now < self.fires {
            return Poll::Pending;
        }
        self.timer.rearm(self.when - now);
        self.fires = self.when;
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => {
                self.armed = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                match &mut self.armed {
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => self.armed = Some(cx.waker().clone()),
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

    /// A timer that never fires by itself and counts how often it is set and polled.
    #[derive(Default)]
    struct Fake {
        rearms: Rc<Cell<u32>>,
        polls: Rc<Cell<u32>>,
    }

    impl Future for Fake {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            Poll::Pending
        }
    }

    impl Rearm for Fake {
        fn rearm(&mut self, _after: Duration) {
            self.rearms.set(self.rearms.get() + 1);
        }
    }

    fn fake_deadline() -> (Deadline<Fake>, Rc<Cell<u32>>, Rc<Cell<u32>>) {
        let fake = Fake::default();
        let (rearms, polls) = (fake.rearms.clone(), fake.polls.clone());
        (Deadline::new(fake), rearms, polls)
    }

    fn poll_wait<T: Rearm>(deadline: &mut Deadline<T>, cx: &mut Context<'_>) -> Poll<()> {
        std::pin::pin!(deadline.wait()).poll(cx)
    }

    #[test]
    fn a_later_deadline_leaves_the_registered_timer_alone() {
        let (mut deadline, rearms, polls) = fake_deadline();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        deadline.set(now + Duration::from_secs(3600));
        assert!(poll_wait(&mut deadline, &mut cx).is_pending());
        for hours in 2..5 {
            deadline.set(now + Duration::from_secs(3600 * hours));
            assert!(poll_wait(&mut deadline, &mut cx).is_pending());
        }
        assert_eq!((rearms.get(), polls.get()), (1, 1));
    }

    #[test]
    fn an_earlier_deadline_registers_the_timer_again() {
        let (mut deadline, rearms, polls) = fake_deadline();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        deadline.set(now + Duration::from_secs(7200));
        assert!(poll_wait(&mut deadline, &mut cx).is_pending());
        deadline.set(now + Duration::from_secs(3600));
        assert!(poll_wait(&mut deadline, &mut cx).is_pending());
        assert_eq!((rearms.get(), polls.get()), (2, 2));
    }

    #[test]
    fn a_deadline_that_came_is_ready_without_the_timer() {
        let (mut deadline, rearms, polls) = fake_deadline();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        deadline.set(Instant::now());
        assert!(poll_wait(&mut deadline, &mut cx).is_ready());
        assert_eq!((rearms.get(), polls.get()), (0, 0));
    }

    /// Over a glommio timer: a deadline moved later while registered ends at its new instant
    /// (the timer fires at the old one and is registered again), one moved earlier at its new
    /// instant (not at the old one).
    #[test]
    fn a_reused_glommio_timer_ends_each_wait_at_its_instant() {
        let (later, earlier) = crate::runtime::spawn_executor("deadline-test", None, || async {
            let mut deadline = Deadline::new(crate::runtime::Timer::new(Duration::ZERO));
            let start = Instant::now();
            deadline.set(start + Duration::from_millis(20));
            assert!(futures_lite::future::poll_once(deadline.wait())
                .await
                .is_none());
            deadline.set(start + Duration::from_millis(60));
            deadline.wait().await;
            let later = start.elapsed();
            let start = Instant::now();
            deadline.set(start + Duration::from_secs(3600));
            assert!(futures_lite::future::poll_once(deadline.wait())
                .await
                .is_none());
            deadline.set(start + Duration::from_millis(20));
            deadline.wait().await;
            (later, start.elapsed())
        })
        .expect("executor starts")
        .join()
        .expect("executor runs");
        assert!(later >= Duration::from_millis(60), "{later:?}");
        assert!(
            (Duration::from_millis(20)..Duration::from_secs(60)).contains(&earlier),
            "{earlier:?}"
        );
    }
}
