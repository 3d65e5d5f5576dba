//! What one wake costs a shard: a shard echoes 8-byte messages on a loopback socket, so between
//! two messages it runs out of work, sleeps in its reactor and is woken by the socket's
//! readiness poll, the cycle every relayed event goes through. The time measured is the shard
//! thread's own CPU time per round trip (`CLOCK_THREAD_CPUTIME_ID`, user and kernel), not the
//! wall time, so that the peer thread and other processes on the machine stay out of it as far
//! as they can; the syscalls (a `recv`, a `send`, the reactor's `io_uring_enter`) are in it.
//!
//! Then reported as `ALLOC <name>: <allocs>/op <bytes> B/op` over 10 000 round trips (see
//! `benches/README.md`): the allocations of the shard's runtime per wake.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use shardgate::runtime;

#[path = "alloc_counter.rs"]
mod alloc_counter;

#[global_allocator]
static ALLOC: alloc_counter::Counting = alloc_counter::Counting;

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

/// One message of the echo.
const MESSAGE: usize = 8;

/// The calling thread's CPU time (user and kernel), in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Starts the echoing shard. Before writing each echo it publishes its thread's CPU time in
/// `cpu`, so the peer, once it has the echo, reads the shard's CPU time up to that round.
fn echo_shard(addr: SocketAddr, cpu: Arc<AtomicU64>) {
    runtime::spawn_executor("bench-echo", None, move || async move {
        let mut stream = runtime::connect(addr, Duration::from_secs(5))
            .await
            .expect("the peer listens");
        // Larger than a message, as a relay's read buffer is: every read is partial and arms
        // the socket's readiness poll for the next one.
        let mut buf = [0u8; 64];
        loop {
            let mut got = 0;
            while got < MESSAGE {
                match stream.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            cpu.store(thread_cpu_ns(), Ordering::SeqCst);
            if stream.write_all(&buf[..MESSAGE]).await.is_err() {
                return;
            }
        }
    })
    .expect("executor starts");
}

/// One round trip from the peer's side.
fn round_trip(peer: &mut TcpStream) {
    let message = [7u8; MESSAGE];
    let mut echo = [0u8; MESSAGE];
    peer.write_all(&message).expect("the shard reads");
    peer.read_exact(&mut echo).expect("the shard echoes");
}

fn bench_wake(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let cpu = Arc::new(AtomicU64::new(0));
    echo_shard(listener.local_addr().expect("address"), cpu.clone());
    let (mut peer, _) = listener.accept().expect("the shard connects");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    peer.set_nodelay(true).expect("nodelay");
    for _ in 0..1_000 {
        round_trip(&mut peer);
    }

    c.bench_function("runtime/echo_wake_shard_cpu", |b| {
        b.iter_custom(|iters| {
            let start = cpu.load(Ordering::SeqCst);
            for _ in 0..iters {
                round_trip(&mut peer);
            }
            Duration::from_nanos(cpu.load(Ordering::SeqCst) - start)
        })
    });

    alloc_counter::report_allocs("runtime/echo_wake", || round_trip(&mut peer));
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_wake
}
criterion_main!(benches);
