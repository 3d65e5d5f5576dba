//! The thin layer between shardgate and its thread-per-core runtime.
//!
//! Everything the data plane needs from glommio (executors pinned to cores, listeners with
//! `SO_REUSEPORT`, outbound connections, timers, task spawning) goes through this module, so that
//! a fork of glommio or another thread-per-core runtime can replace it without touching the relay.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::task::JoinHandle;

/// Registered io_uring buffer memory per executor. glommio uses it for storage DMA only; network
/// sockets do not touch it, so we keep it at the minimum and stay under a low `RLIMIT_MEMLOCK`.
const IO_MEMORY_BYTES: usize = 64 * 1024;

/// Turns off the executor's latency preemption timer (a meaning the patched glommio in
/// `vendor/glommio` gives `Duration::MAX`). A shard runs one task queue of I/O-bound session
/// tasks, so the timer preempted nothing, yet arming and cancelling it around every wake cost
/// about two io_uring_enter calls (`perf/README.md`, "Executor wake-ups"). The throughput timer
/// still sends the executor back to its rings after every 128 completions.
const NO_LATENCY_PREEMPTION: Duration = Duration::MAX;

/// The CPUs this process may run on, from `sched_getaffinity` (not the CPUs online), so that a
/// restricted cgroup or container never pins a shard to a CPU it cannot use.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect())
}

/// Starts a thread running a local executor, pinned to `cpu` when given, and runs `fut_gen`'s
/// future on it to completion.
pub fn spawn_executor<G, F, T>(
    name: &str,
    cpu: Option<usize>,
    fut_gen: G,
) -> io::Result<std::thread::JoinHandle<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = match cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    let builder = glommio::LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .preempt_timer(NO_LATENCY_PREEMPTION);
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let executor = builder
                .make()
                .unwrap_or_else(|e| panic!("cannot start executor {name}: {e}"));
            executor.run(fut_gen())
        })
}

/// The `io_uring_enter` calls the calling shard's runtime has made so far, to submit I/O or to
/// sleep: what a wake costs in system calls, counted by the tests that keep it low.
pub fn ring_enters() -> u64 {
    glommio::ring_enters()
}

/// Hands the pages this thread freed back to the OS. mimalloc purges freed pages lazily, on
/// the thread's next allocations, so a shard gone quiet after a burst (thousands of sessions
/// that ran a turn and now rest) kept the burst's pages resident for as long as it stayed
/// quiet: 30-50 KiB of RSS per resting session where its heap is ~8 KiB (`perf/README.md`).
/// A shard calls it on a stats tick that saw no turn and no relayed event, so a busy shard
/// never pays for it.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointer; it walks only the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Spawns a task on the current shard; the task is detached and runs until it finishes.
pub fn spawn_local<F>(fut: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(fut).detach();
}

/// Wall-clock time since the Unix epoch, in microseconds (0 if the clock is before 1970): for
/// timestamps that leave the process (usage records, response `created_at`, the mock's event
/// stamps). Durations use `Instant`.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Spawns a task whose panic stops at the task: `on_panic` runs and every other task of the
/// shard goes on (a panic in one session must not take down its shard).
pub fn spawn_contained<F>(fut: F, on_panic: impl FnOnce() + 'static)
where
    F: Future<Output = ()> + 'static,
{
    use futures_util::FutureExt;
    // Combinators, not an async block: a block would store `fut` twice (as captured and as
    // awaited), doubling every connection task's size.
    let task = std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .map(move |outcome| {
            if outcome.is_err() {
                on_panic();
            }
        });
    spawn_local(task);
}

/// Spawns a task on the current shard and returns a handle to await its result.
pub fn spawn_local_handle<F>(fut: F) -> glommio::task::JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(fut).detach()
}

/// A listening socket bound with `SO_REUSEPORT`, created on any thread and adopted by the shard
/// that serves it ([`adopt_listener`]). Every shard binds the same address; the kernel spreads
/// connections over them.
pub struct BoundListener {
    socket: socket2::Socket,
}

impl BoundListener {
    /// Binds and listens.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let domain = socket2::Domain::for_address(addr);
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(BoundListener { socket })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no IP address"))
    }
}

/// Turns a bound listener into the current shard's listener. Must run on the shard's executor.
pub fn adopt_listener(listener: BoundListener) -> TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = listener.socket.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket that nothing else owns any more.
    unsafe { TcpListener::from_raw_fd(fd) }
}

/// Accepts one connection and turns Nagle off on it.
pub async fn accept(listener: &TcpListener) -> io::Result<TcpStream> {
    let stream = listener.accept().await.map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    Ok(stream)
}

/// Connects with a deadline and turns Nagle off (glommio's `connect` does not).
pub async fn connect(addr: SocketAddr, deadline: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(addr, deadline)
        .await
        .map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    Ok(stream)
}

/// Runs `fut` with a deadline; `None` when the deadline passed first.
///
/// A plain combinator, not an `async fn`: an `async fn` keeps its argument and the future it
/// awaits in separate slots, so every future under a deadline took two to three times its size,
/// for as long as it waited (a client session waits under one all its idle life).
pub fn timeout<F: Future>(dur: Duration, fut: F) -> impl Future<Output = Option<F::Output>> {
    futures_lite::future::or(futures_util::FutureExt::map(fut, Some), async move {
        glommio::timer::sleep(dur).await;
        None
    })
}

/// Sleeps on the current shard's timer wheel.
pub async fn sleep(dur: Duration) {
    glommio::timer::sleep(dur).await
}

/// A timer on the current shard's timer wheel that is set again ([`Timer::reset`]) rather than
/// built anew: a task that waits under a deadline over and over (a session between frames)
/// keeps one timer instead of allocating and registering one per wait. Fires (`Ready`) once
/// its instant has come; polled before, it registers the polling task's waker.
pub struct Timer(glommio::timer::Timer);

impl Timer {
    /// A timer for `after` from now. Must run on a shard's executor.
    pub fn new(after: Duration) -> Self {
        Timer(glommio::timer::Timer::new(after))
    }

    /// Sets the timer to fire `after` from now; a registered waker stays registered (for the
    /// new instant).
    pub fn reset(&mut self, after: Duration) {
        self.0.reset(after);
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Runs blocking work (DNS resolution) on the executor's helper thread, off the shard.
pub async fn blocking<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(f).await
}

/// Takes the socket out of a shard's `TcpStream` so another shard can adopt it
/// ([`adopt_stream`]). The stream is closed on this shard; the returned descriptor (a duplicate)
/// keeps the connection open. Bytes the caller already read are its own to pass along. When the
/// descriptor cannot be duplicated (descriptor limit), the stream comes back untouched.
pub fn detach_stream(
    stream: TcpStream,
) -> Result<std::os::fd::OwnedFd, (io::Error, Box<TcpStream>)> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which is alive for the whole borrow.
    match unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned() {
        Ok(fd) => {
            drop(stream);
            Ok(fd)
        }
        Err(e) => Err((e, Box::new(stream))),
    }
}

/// Adopts a connected TCP socket detached on another shard. Must run on the adopting shard.
pub fn adopt_stream(fd: std::os::fd::OwnedFd) -> TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `fd` is an owned, connected TCP socket; ownership moves into the stream.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

/// A shard's bound end of a [`shard_channel`] for receiving.
pub use glommio::channels::shared_channel::ConnectedReceiver as ShardReceiver;
/// A shard's bound end of a [`shard_channel`] for sending.
pub use glommio::channels::shared_channel::ConnectedSender as ShardSender;
/// A shard channel's receiving end before it is bound to its shard (`Send`).
pub use glommio::channels::shared_channel::SharedReceiver as UnboundShardReceiver;
/// A shard channel's sending end before it is bound to its shard (`Send`).
pub use glommio::channels::shared_channel::SharedSender as UnboundShardSender;

/// One-way channel between two shards: create both ends anywhere, move each to its shard, and
/// bind them there ([`connect_sender`], [`connect_receiver`]).
pub fn shard_channel<T: Send>(capacity: usize) -> (UnboundShardSender<T>, UnboundShardReceiver<T>) {
    glommio::channels::shared_channel::new_bounded(capacity)
}

/// Binds the sending end to the current shard. Completes once the receiving shard bound its
/// end too, so bind every end of a mesh concurrently.
pub async fn connect_sender<T: Send + 'static>(tx: UnboundShardSender<T>) -> ShardSender<T> {
    tx.connect().await
}

/// Binds the receiving end to the current shard (see [`connect_sender`]).
pub async fn connect_receiver<T: Send + 'static>(rx: UnboundShardReceiver<T>) -> ShardReceiver<T> {
    rx.connect().await
}

/// Why a cross-shard send did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSendError {
    /// The channel is full.
    Full,
    /// The receiving shard is gone.
    Closed,
}

/// Sends without waiting; on failure the item comes back with the reason.
pub fn try_send_to_shard<T: Send>(tx: &ShardSender<T>, item: T) -> Result<(), (ShardSendError, T)> {
    use glommio::{GlommioError, ResourceType};
    match tx.try_send(item) {
        Ok(()) => Ok(()),
        Err(GlommioError::WouldBlock(ResourceType::Channel(item))) => {
            Err((ShardSendError::Full, item))
        }
        Err(GlommioError::Closed(ResourceType::Channel(item))) => {
            Err((ShardSendError::Closed, item))
        }
        // glommio's `try_send` fails only with `WouldBlock` or `Closed`, both carrying the item.
        Err(other) => unreachable!("shared channel try_send failed with {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[test]
    fn a_contained_panic_ends_only_its_task() {
        let outcome = spawn_executor("contain-test", None, || async {
            let panicked = Rc::new(Cell::new(false));
            let flag = panicked.clone();
            spawn_contained(
                async { panic!("deliberate panic of a test task") },
                move || flag.set(true),
            );
            let done = Rc::new(Cell::new(0));
            for _ in 0..3 {
                let d = done.clone();
                spawn_contained(
                    async move {
                        sleep(Duration::from_millis(1)).await;
                        d.set(d.get() + 1);
                    },
                    || {},
                );
            }
            sleep(Duration::from_millis(50)).await;
            (panicked.get(), done.get())
        })
        .expect("executor starts")
        .join()
        .expect("the executor survived the panic");
        assert_eq!(outcome, (true, 3));
    }

    /// The patched reactor keeps a timer in flight across wake-ups (`vendor/glommio/PATCH.md`):
    /// a shard that rested with only a 60 s timer pending, then woken from another thread, must
    /// still fire a 20 ms timer asked for afterwards in about 20 ms, not when the kept one does.
    #[test]
    fn a_nearer_timer_replaces_the_farther_one_the_reactor_kept() {
        let waited = spawn_executor("timer-test", None, || async {
            spawn_local(sleep(Duration::from_secs(60)));
            let (tx, rx) = futures_channel::oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let _ = tx.send(());
            });
            rx.await.expect("the waking thread sends");
            let start = std::time::Instant::now();
            sleep(Duration::from_millis(20)).await;
            start.elapsed()
        })
        .expect("executor starts")
        .join()
        .expect("the executor ran to the end");
        assert!(
            waited < Duration::from_secs(10),
            "a 20 ms sleep took {waited:?}"
        );
    }

    /// The patched executor reads the clock once after each sleep and once at the end of each
    /// task queue's run, and lends that reading to the timer pass that follows
    /// (`vendor/glommio/PATCH.md`, session 14). A reading lent from before a sleep or before a
    /// task's run would be stale by that long: due timers would wait for one more timeout, and a
    /// sleep would last about twice what was asked. Sleeps of 10 ms in a row, and a 40 ms timer
    /// due while a task holds the shard for 50 ms (it fires when the task lets go, not 40 ms
    /// later), must each end on time (medians, and bounds halfway to the wrong answers, so that
    /// slow wake-ups on a busy machine do not fail the test).
    #[test]
    fn timers_fire_on_time_with_the_clock_read_once_per_loop() {
        use std::time::Instant;
        fn median(mut v: Vec<Duration>) -> Duration {
            v.sort();
            v[v.len() / 2]
        }
        let (sleeps, after_busy) = spawn_executor("clock-test", None, || async {
            let mut sleeps = Vec::new();
            for _ in 0..30 {
                let start = Instant::now();
                sleep(Duration::from_millis(10)).await;
                sleeps.push(start.elapsed());
            }
            let mut after_busy = Vec::new();
            for _ in 0..5 {
                let start = Instant::now();
                let timer = spawn_local_handle(sleep(Duration::from_millis(40)));
                spawn_local(async {
                    let busy = Instant::now();
                    while busy.elapsed() < Duration::from_millis(50) {}
                });
                timer.await;
                after_busy.push(start.elapsed());
            }
            (median(sleeps), median(after_busy))
        })
        .expect("executor starts")
        .join()
        .expect("the executor ran to the end");
        assert!(
            sleeps < Duration::from_millis(15),
            "10 ms sleeps took {sleeps:?} (median)"
        );
        assert!(
            after_busy < Duration::from_millis(70),
            "a 40 ms timer behind a 50 ms run took {after_busy:?} (median)"
        );
    }

    /// Wakes from another thread reach a sleeping shard: the patched reactor pairs two SeqCst
    /// fences where glommio issued a sys_membarrier before every sleep
    /// (`vendor/glommio/PATCH.md`). Each of 20,000 round trips leaves the shard to go to sleep
    /// again; one lost wake-up would stall the thread's wait for its answer.
    #[test]
    fn wakes_from_another_thread_reach_a_sleeping_shard() {
        const ROUNDS: usize = 20_000;
        let (to_shard, mut shard_rx) = futures_channel::mpsc::unbounded::<usize>();
        let (to_thread, thread_rx) = std::sync::mpsc::channel::<usize>();
        let _executor = spawn_executor("wake-test", None, move || async move {
            use futures_util::StreamExt;
            while let Some(n) = shard_rx.next().await {
                if to_thread.send(n).is_err() {
                    break;
                }
            }
        })
        .expect("executor starts");
        for n in 0..ROUNDS {
            to_shard.unbounded_send(n).expect("the shard listens");
            let answer = thread_rx.recv_timeout(Duration::from_secs(10));
            assert_eq!(answer, Ok(n), "round trip {n} of {ROUNDS} got no answer");
        }
    }

    /// Shard channels still deliver to a shard that is asleep or about to be: the patched
    /// reactor looks at its shard channels only after a peer's `notify` flagged them
    /// (`vendor/glommio/PATCH.md`, session 10), where glommio looked on every executor loop.
    /// Two shards play 20,000 rounds of ping-pong over a pair of channels, so each goes to sleep
    /// between its items, and the other sends sometimes before, sometimes while and sometimes
    /// after it settles; one item left unseen stalls the game, and the thread's wait fails.
    #[test]
    fn shard_channel_items_reach_a_shard_going_to_sleep() {
        const ROUNDS: usize = 20_000;
        let (ping_tx, ping_rx) = shard_channel::<usize>(4);
        let (pong_tx, pong_rx) = shard_channel::<usize>(4);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
        let _ponger = spawn_executor("pong-test", None, move || async move {
            let rx = connect_receiver(ping_rx).await;
            let tx = connect_sender(pong_tx).await;
            while let Some(n) = rx.recv().await {
                if try_send_to_shard(&tx, n).is_err() {
                    break;
                }
            }
        })
        .expect("executor starts");
        let _pinger = spawn_executor("ping-test", None, move || async move {
            let tx = connect_sender(ping_tx).await;
            let rx = connect_receiver(pong_rx).await;
            let mut answered = 0;
            for n in 0..ROUNDS {
                if try_send_to_shard(&tx, n).is_err() || rx.recv().await != Some(n) {
                    break;
                }
                answered += 1;
            }
            let _ = done_tx.send(answered);
        })
        .expect("executor starts");
        let answered = done_rx.recv_timeout(Duration::from_secs(30));
        assert_eq!(answered, Ok(ROUNDS), "the ping-pong stalled or broke");
    }
}
