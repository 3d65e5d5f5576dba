//! The accept loop both stats servers share: the thread sleeps in `poll(2)` on its listener and
//! a stop eventfd, so an idle gateway's stats servers cost no wake-ups (a 50 ms accept poll was
//! 20 wake-ups a second per server, ~1.6 % of a gateway's CPU at 400 turns/s); one short-lived
//! thread per connection, a cap on concurrent connections that idle or slow
//! peers cannot hold against a real request: at the cap, a new connection evicts the one that
//! has waited on its peer the longest (a connection busy answering is never evicted).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Concurrent connections one server serves; past it the longest-waiting one is evicted.
pub const MAX_CONNS: usize = 16;

/// Connection threads alive at once, evicted ones still winding down included.
const MAX_THREADS: usize = 2 * MAX_CONNS;

/// How long the accept loop backs off after an accept error (out of descriptors, say), so a
/// listener that stays readable does not spin it.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// How long a new connection waits for an evicted one's thread to wind down when every thread
/// slot is taken (a busy machine can take a while to schedule the exits).
const THREAD_WAIT: Duration = Duration::from_secs(2);

/// Waits (up to [`THREAD_WAIT`]) for a free thread slot: `false` if none came. Evicted
/// connections hold their slot until their thread has seen its socket closed and returned.
fn wait_for_thread(threads: &AtomicUsize) -> bool {
    let deadline = Instant::now() + THREAD_WAIT;
    while threads.load(Ordering::Acquire) >= MAX_THREADS {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A socket the accept loop can close from outside its serving thread, to evict it.
pub trait Conn: Send + 'static {
    /// Another handle to the same socket.
    fn handle(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Shuts the socket down both ways: a thread blocked reading it sees end of stream at once.
    fn close(&self);
}

impl Conn for TcpStream {
    fn handle(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Conn for UnixStream {
    fn handle(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// What a serving thread sees of its connection: the server's stop flag, and a way to mark
/// itself busy (not evictable) while it answers.
pub struct ConnCtx<'a> {
    stop: &'a AtomicBool,
    entry: &'a Entry,
}

impl ConnCtx<'_> {
    /// The server is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Marks the connection busy until the guard drops; then it waits on its peer again, from
    /// now on (the eviction order).
    pub fn busy(&self) -> Busy<'_> {
        self.entry.set(|s| s.busy = true);
        Busy(self.entry)
    }
}

/// Held while a connection answers a request: it is not evicted meanwhile.
pub struct Busy<'a>(&'a Entry);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(|s| {
            s.busy = false;
            s.waiting_since = Instant::now();
        });
    }
}

/// One connection's eviction state, shared by its serving thread and the registry.
#[derive(Debug)]
struct Entry(Mutex<EntryState>);

#[derive(Debug, Clone, Copy)]
struct EntryState {
    busy: bool,
    /// Since when it has been waiting on its peer (accept, or the end of its last answer).
    waiting_since: Instant,
}

impl Entry {
    fn get(&self) -> EntryState {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set(&self, f: impl FnOnce(&mut EntryState)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The connections being served (evicted ones leave it at once).
struct Registry<C> {
    next_id: u64,
    conns: Vec<(u64, Arc<Entry>, C)>,
}

impl<C: Conn> Registry<C> {
    /// Makes room for one more connection: `false` when every slot is busy answering.
    fn make_room(&mut self) -> bool {
        if self.conns.len() < MAX_CONNS {
            return true;
        }
        let longest_waiting = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, (_, e, _))| {
                let s = e.get();
                (!s.busy).then_some((i, s.waiting_since))
            })
            .min_by_key(|(_, since)| *since)
            .map(|(i, _)| i);
        let Some(i) = longest_waiting else {
            return false;
        };
        let (_, _, handle) = self.conns.swap_remove(i);
        handle.close();
        true
    }

    fn remove(&mut self, id: u64) {
        self.conns.retain(|(i, _, _)| *i != id);
    }
}

fn lock<C>(r: &Mutex<Registry<C>>) -> MutexGuard<'_, Registry<C>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// A server thread, the flag that stops it, and the eventfd that wakes it to see the flag.
pub struct Server {
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// A non-blocking eventfd: written once to wake the accept loop out of `poll(2)` at stop.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sleeps until `listener` has a connection to accept or `wake` was written; `EINTR` returns
/// too (the caller loops).
fn wait_readable(listener: &impl AsFd, wake: &OwnedFd) {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd for the length of the call; both
    // descriptors are owned by the caller's borrows and stay open across it.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
}

impl Server {
    /// Runs `accept` on `listener` (which must be non-blocking) in a loop on a new thread named
    /// `name`, sleeping in `poll(2)` while nothing is pending; each accepted connection is passed
    /// to `serve` on its own thread, up to [`MAX_CONNS`] at once (past it, the connection that
    /// has waited on its peer the longest is closed to make room).
    pub fn spawn<L, C, A, S>(name: &str, listener: L, mut accept: A, serve: S) -> io::Result<Server>
    where
        L: AsFd + Send + 'static,
        C: Conn,
        A: FnMut(&L) -> io::Result<C> + Send + 'static,
        S: Fn(C, &ConnCtx<'_>) + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let wake = Arc::new(eventfd()?);
        let woken = wake.clone();
        let serve = Arc::new(serve);
        let threads = Arc::new(AtomicUsize::new(0));
        let registry = Arc::new(Mutex::new(Registry::<C> {
            next_id: 0,
            conns: Vec::new(),
        }));
        let conn_name = format!("{name}-conn");
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let conn = match accept(&listener) {
                        Ok(c) => c,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait_readable(&listener, &woken);
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            crate::error_limited!(error = %e, "stats accept failed");
                            std::thread::sleep(ERROR_BACKOFF);
                            continue;
                        }
                    };
                    if !wait_for_thread(&threads) {
                        continue;
                    }
                    let Ok(handle) = conn.handle() else {
                        continue;
                    };
                    let entry = Arc::new(Entry(Mutex::new(EntryState {
                        busy: false,
                        waiting_since: Instant::now(),
                    })));
                    let id = {
                        let mut reg = lock(&registry);
                        if !reg.make_room() {
                            continue;
                        }
                        reg.next_id += 1;
                        let id = reg.next_id;
                        reg.conns.push((id, entry.clone(), handle));
                        id
                    };
                    threads.fetch_add(1, Ordering::AcqRel);
                    let (serve, done, flag, reg) = (
                        serve.clone(),
                        threads.clone(),
                        flag.clone(),
                        registry.clone(),
                    );
                    let spawned =
                        std::thread::Builder::new()
                            .name(conn_name.clone())
                            .spawn(move || {
                                serve(
                                    conn,
                                    &ConnCtx {
                                        stop: &flag,
                                        entry: &entry,
                                    },
                                );
                                lock(&reg).remove(id);
                                done.fetch_sub(1, Ordering::AcqRel);
                            });
                    if let Err(e) = spawned {
                        lock(&registry).remove(id);
                        threads.fetch_sub(1, Ordering::AcqRel);
                        crate::error_limited!(error = %e, "cannot start a stats connection thread");
                    }
                }
            })?;
        Ok(Server {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops accepting and joins the accept thread; connection threads end at their next read.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array to our own eventfd. A failure (the counter
        // is full) still leaves it readable, which is all the wake needs.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// An echo-once server: reads one byte (waiting, evictable), answers it busy.
    fn echo_server(path: &std::path::Path) -> Server {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        Server::spawn(
            "test",
            listener,
            |l: &UnixListener| l.accept().map(|(s, _)| s),
            |mut s: UnixStream, ctx: &ConnCtx<'_>| {
                s.set_nonblocking(false).unwrap();
                let mut b = [0u8; 1];
                if matches!(s.read(&mut b), Ok(1)) {
                    let _busy = ctx.busy();
                    let _ = s.write_all(&b);
                }
            },
        )
        .unwrap()
    }

    fn answers(s: &mut UnixStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        s.write_all(b"x").is_ok() && matches!(s.read(&mut b), Ok(1))
    }

    /// Voluntary context switches of this process's thread named `name` (`None`: no such thread).
    fn wakeups_of(name: &str) -> Option<u64> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            (comm.trim_end() == name).then_some(())?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse()
                .ok()
        })
    }

    #[test]
    fn an_idle_accept_loop_sleeps_until_a_peer_or_stop() {
        let dir = std::env::temp_dir().join(format!("sg-conns-idle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = Server::spawn(
            "idle-accept",
            listener,
            |l: &UnixListener| l.accept().map(|(s, _)| s),
            |mut s: UnixStream, _: &ConnCtx<'_>| {
                let _ = s.write_all(b"x");
            },
        )
        .unwrap();
        // Let the thread reach its sleep, then watch it: a polling loop (every 50 ms) would
        // wake ~10 times in half a second.
        let mut before = None;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(20));
            before = wakeups_of("idle-accept");
            if before.is_some() {
                break;
            }
        }
        let before = before.expect("the accept thread is running");
        std::thread::sleep(Duration::from_millis(500));
        let after = wakeups_of("idle-accept").unwrap();
        assert!(
            after - before <= 1,
            "woke {} times while idle",
            after - before
        );
        // A peer still wakes it, and stop ends it.
        let mut peer = UnixStream::connect(&path).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(peer.read(&mut b), Ok(1)));
        server.stop();
        assert_eq!(wakeups_of("idle-accept"), None, "the accept thread ended");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn idle_peers_past_the_cap_are_evicted_oldest_first() {
        let dir = std::env::temp_dir().join(format!("sg-conns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let server = echo_server(&path);
        let idle: Vec<UnixStream> = (0..MAX_CONNS + 4)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let mut fresh = UnixStream::connect(&path).unwrap();
        assert!(answers(&mut fresh), "a new peer is served past the cap");
        // The oldest idle peers were closed to make room; the newest are still served.
        let mut oldest = idle[0].try_clone().unwrap();
        oldest
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(oldest.read(&mut b), Ok(0) | Err(_)), "evicted");
        let mut newest = idle[MAX_CONNS + 3].try_clone().unwrap();
        assert!(answers(&mut newest));
        server.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
