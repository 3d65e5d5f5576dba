//! What a wake costs a shard's runtime, and that every wake still arrives: a shard echoing a
//! loopback socket goes to sleep between the peer's messages and is woken by the socket's
//! readiness poll, tens of thousands of times. The patched glommio (`vendor/glommio/PATCH.md`,
//! session 9) reuses the socket's poll source and the ring link it sleeps on, so such a wake
//! allocates nothing; upstream allocated both on every sleep. A timer asked for afterwards must
//! still wake the shard through the ring link it kept armed all along. A shard that sleeps
//! between messages submits its socket's re-armed readiness poll in the same `io_uring_enter`
//! that sleeps (session 11); upstream made one call to submit and another to sleep. When
//! something else wakes the shard before it can sleep (here a timer already due), the poll
//! waits for the next sleep's call instead of a call of its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardgate::runtime;

/// Counts the allocations made on threads that asked for it ([`Counted::on`]), so that the
/// test harness and the peer thread stay out of the reading.
struct Counted;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

impl Counted {
    fn on(on: bool) {
        COUNTING.with(|c| c.set(on));
    }

    fn count() {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; only a counter is added.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Counted::count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Counted::count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Counted::count();
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counted = Counted;

/// Round trips before the counting starts (pools and queues reach their steady size).
const WARM_UP: usize = 2_000;
/// Round trips counted.
const COUNTED: usize = 20_000;
/// One message of the echo.
const MESSAGE: usize = 8;

/// What the shard saw: allocations and `io_uring_enter` calls over the counted round trips,
/// and how long a 20 ms sleep took after them.
struct Reading {
    allocs: u64,
    enters: u64,
    slept: Duration,
}

/// Reads one `MESSAGE`-byte message (in as many reads as it takes) and writes it back.
async fn echo_one<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, buf: &mut [u8], round: usize) {
    let mut got = 0;
    while got < MESSAGE {
        let n = stream.read(&mut buf[got..]).await.expect("the peer sends");
        assert!(n > 0, "the peer closed at round {round}");
        got += n;
    }
    stream
        .write_all(&buf[..MESSAGE])
        .await
        .expect("the peer reads");
}

/// The shard's side: connects, echoes `WARM_UP + COUNTED` messages (reading into a buffer
/// larger than a message, as a relay does, so every read is partial), then sleeps 20 ms.
fn echo_shard(addr: SocketAddr) -> std::thread::JoinHandle<Reading> {
    runtime::spawn_executor("wake-echo", None, move || async move {
        let mut stream = runtime::connect(addr, Duration::from_secs(5))
            .await
            .expect("the peer listens");
        let mut buf = [0u8; 64];
        let mut enters_before = 0;
        for round in 0..WARM_UP + COUNTED {
            if round == WARM_UP {
                ALLOCS.store(0, Ordering::Relaxed);
                Counted::on(true);
                enters_before = runtime::ring_enters();
            }
            echo_one(&mut stream, &mut buf, round).await;
        }
        Counted::on(false);
        let allocs = ALLOCS.load(Ordering::Relaxed);
        let enters = runtime::ring_enters() - enters_before;
        let start = Instant::now();
        runtime::sleep(Duration::from_millis(20)).await;
        Reading {
            allocs,
            enters,
            slept: start.elapsed(),
        }
    })
    .expect("executor starts")
}

#[test]
fn a_shard_woken_by_its_socket_allocates_nothing_per_wake_and_its_timers_still_fire() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let shard = echo_shard(listener.local_addr().expect("address"));
    let (mut peer, _) = listener.accept().expect("the shard connects");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut echo = [0u8; MESSAGE];
    for round in 0..WARM_UP + COUNTED {
        let message = (round as u64).to_le_bytes();
        peer.write_all(&message).expect("the shard reads");
        peer.read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("round trip {round} got no echo (a lost wake?): {e}"));
        assert_eq!(echo, message, "round trip {round}");
    }
    let reading = shard.join().expect("the shard ran to the end");
    // Upstream glommio: 2 allocations per round trip (the readiness poll's source and the ring
    // link's). A few may come from a queue growing; one per 100 round trips is plenty of room.
    assert!(
        reading.allocs < (COUNTED / 10) as u64,
        "{} allocations over {COUNTED} round trips",
        reading.allocs
    );
    eprintln!(
        "{} io_uring_enter calls over {COUNTED} round trips",
        reading.enters
    );
    assert!(
        reading.slept < Duration::from_secs(2),
        "a 20 ms sleep after the echo took {:?}",
        reading.slept
    );
}

/// Round trips of the sleeping echo, each with the shard asleep before the peer sends.
const SLEEPING_ROUNDS: usize = 2_000;

/// The timer of the nudged sleeping echo (see [`sleeping_echo_shard`]).
const NUDGE: Duration = Duration::from_micros(50);

/// What the sleeping echo's shard saw over its counted round trips.
struct SleepReading {
    enters: u64,
    sleeps: u64,
}

/// The calling thread's voluntary context switches (each time it slept), from procfs.
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status")
}

/// Whether thread `tid` of this process is asleep (state `S`, which a shard is only in while
/// its reactor waits in `io_uring_enter`).
fn asleep(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        == Some('S')
}

/// The echoing shard of the sleeping echo: publishes its thread id in `tid`, then counts its
/// `io_uring_enter` calls and its sleeps over [`SLEEPING_ROUNDS`] after one warm-up message.
/// What each echo does besides echoing.
#[derive(Clone, Copy, Debug)]
enum Extra {
    /// Nothing.
    Nothing,
    /// Spawns a task waiting on a timer and a task that keeps the shard busy until the timer
    /// is due, so that the shard, when it runs out of work, finds a task to wake instead of
    /// sleeping, and runs once more first.
    Nudge,
}

fn sleeping_echo_shard(
    addr: SocketAddr,
    tid: Arc<AtomicI32>,
    extra: Extra,
) -> std::thread::JoinHandle<SleepReading> {
    runtime::spawn_executor("wake-sleep", None, move || async move {
        // SAFETY: gettid takes no argument and cannot fail.
        tid.store(unsafe { libc::gettid() }, Ordering::Release);
        let mut stream = runtime::connect(addr, Duration::from_secs(5))
            .await
            .expect("the peer listens");
        let mut buf = [0u8; 64];
        let (mut enters, mut sleeps) = (0, 0);
        for round in 0..=SLEEPING_ROUNDS {
            if round == 1 {
                enters = runtime::ring_enters();
                sleeps = voluntary_switches();
            }
            echo_one(&mut stream, &mut buf, round).await;
            match extra {
                Extra::Nothing => {}
                Extra::Nudge => {
                    runtime::spawn_local(runtime::sleep(NUDGE));
                    runtime::spawn_local(async {
                        let due = Instant::now() + 2 * NUDGE;
                        while Instant::now() < due {
                            std::hint::spin_loop();
                        }
                    });
                }
            }
        }
        SleepReading {
            enters: runtime::ring_enters() - enters,
            sleeps: voluntary_switches() - sleeps,
        }
    })
    .expect("executor starts")
}

/// Runs the sleeping echo; the peer sends each message once the shard is asleep.
fn sleeping_echo(extra: Extra) -> SleepReading {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tid = Arc::new(AtomicI32::new(0));
    let shard = sleeping_echo_shard(listener.local_addr().expect("address"), tid.clone(), extra);
    let (mut peer, _) = listener.accept().expect("the shard connects");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let tid = tid.load(Ordering::Acquire);
    let mut echo = [0u8; MESSAGE];
    for round in 0..=SLEEPING_ROUNDS {
        // The shard re-armed its read and went to sleep before the message arrives (bounded:
        // a shard that does not sleep gets the message anyway, and the sleep count says so).
        let give_up = Instant::now() + Duration::from_secs(1);
        while !asleep(tid) && Instant::now() < give_up {
            std::thread::yield_now();
        }
        let message = (round as u64).to_le_bytes();
        peer.write_all(&message).expect("the shard reads");
        peer.read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("round trip {round} got no echo (a lost wake?): {e}"));
        assert_eq!(echo, message, "round trip {round}");
    }
    let reading = shard.join().expect("the shard ran to the end");
    eprintln!(
        "{extra:?}: {} io_uring_enter calls and {} sleeps over {SLEEPING_ROUNDS} round trips",
        reading.enters, reading.sleeps
    );
    // Every round trip sleeps once (a few more: a preemption, a page fault's wait).
    assert!(
        reading.sleeps >= SLEEPING_ROUNDS as u64,
        "the shard slept {} times over {SLEEPING_ROUNDS} round trips",
        reading.sleeps
    );
    reading
}

/// `per_round` calls per round trip, give or take: the throughput timer's re-arm and the odd
/// interrupted wait stay well under a tenth of a call more.
fn assert_enters_per_round_trip(reading: &SleepReading, per_round: usize) {
    assert!(
        reading.enters < (per_round * SLEEPING_ROUNDS + SLEEPING_ROUNDS / 10) as u64,
        "{} io_uring_enter calls over {SLEEPING_ROUNDS} round trips",
        reading.enters
    );
}

/// One call per round trip submits the re-armed poll and sleeps; upstream made two.
#[test]
fn a_shard_that_sleeps_between_messages_rearms_its_read_and_sleeps_in_one_io_uring_enter() {
    assert_enters_per_round_trip(&sleeping_echo(Extra::Nothing), 1);
}

#[test]
fn a_shard_woken_again_before_it_sleeps_still_submits_its_read_with_the_sleep() {
    assert_enters_per_round_trip(&sleeping_echo(Extra::Nudge), 1);
}
