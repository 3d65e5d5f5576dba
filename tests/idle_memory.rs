//! Memory an idle client WebSocket session holds in the gateway, counted by a global allocator
//! that tracks live heap bytes (not RSS, not time): operators hold tens of thousands of idle
//! Codex sessions per host, so a per-session regression is real money.
//!
//! The clients are raw loopback sockets that send the upgrade request and read the 101 into a
//! stack buffer, so everything the counter sees between the two readings is the gateway's.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::*;

/// Live heap bytes of the whole process.
static LIVE: AtomicI64 = AtomicI64::new(0);

/// Forwards to the system allocator and keeps [`LIVE`] up to date.
struct Tracking;

// SAFETY: every call is forwarded unchanged to `System`; only a counter is added.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Sessions opened for the reading.
const SESSIONS: usize = 200;
/// The client WebSocket read buffer (`session::READ_BUFFER_BYTES`): every session holds it, so
/// a reading below it means the sessions were not there when it was taken.
const READ_BUFFER: i64 = 16 * 1024;
/// Most heap bytes one idle session may hold: the read buffer plus ~6 KiB measured (the
/// connection task's future ~4 KiB, the socket's poll source, the forwarded headers, wakers),
/// with some room. Before the turn futures were boxed it was ~69 KiB.
const MAX_PER_SESSION: i64 = 24 * 1024;

/// Opens a WebSocket session and leaves it idle (no `response.create` sent).
fn open_idle(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(request).expect("upgrade request");
    let mut head = [0u8; 512];
    let mut got = 0;
    while !head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut head[got..]).expect("upgrade response");
        assert!(n > 0, "closed during the upgrade");
        got += n;
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&head[..got])
    );
    stream
}

#[test]
fn an_idle_websocket_session_holds_little_more_than_its_read_buffer() {
    let up = mock();
    let gw = gateway(config_accounts(&[up.base_url()], "", ""));
    let addr = gw.addr();
    let request = format!(
        "GET /v1/responses HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nauthorization: Bearer {CLIENT_KEY}\r\nsession-id: sess-idle\r\n\r\n"
    );
    let mut held = Vec::with_capacity(SESSIONS + 8);
    // The shard's one-time structures (session maps, timer wheel) grow on the first sessions.
    for _ in 0..8 {
        held.push(open_idle(addr, request.as_bytes()));
    }
    std::thread::sleep(Duration::from_millis(200));

    let before = LIVE.load(Ordering::SeqCst);
    for _ in 0..SESSIONS {
        held.push(open_idle(addr, request.as_bytes()));
    }
    // The 101 is written before the session builds its WebSocket; let the last ones settle.
    std::thread::sleep(Duration::from_millis(200));
    let after = LIVE.load(Ordering::SeqCst);

    let per_session = (after - before) / SESSIONS as i64;
    eprintln!("heap held per idle session: {per_session} bytes");
    assert!(
        per_session >= READ_BUFFER,
        "{per_session} bytes per session: less than the read buffer, the sessions were not open"
    );
    assert!(
        per_session <= MAX_PER_SESSION,
        "an idle session holds {per_session} bytes of heap (bound {MAX_PER_SESSION}); see \
         perf/README.md on idle-session memory for what it held before"
    );
    drop(held);
    gw.stop();
}
