//! The accept loop both stats servers share: non-blocking accept polled against a stop flag,
//! one short-lived thread per connection, a cap on concurrent connections.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Concurrent connections one server serves; more are closed at once.
pub const MAX_CONNS: usize = 16;

/// How often the accept loop looks at the stop flag while idle.
const POLL: Duration = Duration::from_millis(50);

/// A server thread and the flag that stops it.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Runs `accept` (non-blocking) in a loop on a new thread named `name`; each accepted
    /// connection is passed to `serve` on its own thread, up to [`MAX_CONNS`] at once.
    pub fn spawn<C, A, S>(name: &str, mut accept: A, serve: S) -> io::Result<Server>
    where
        C: Send + 'static,
        A: FnMut() -> io::Result<C> + Send + 'static,
        S: Fn(C, &AtomicBool) + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let serve = Arc::new(serve);
        let active = Arc::new(AtomicUsize::new(0));
        let conn_name = format!("{name}-conn");
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let conn = match accept() {
                        Ok(c) => c,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(POLL);
                            continue;
                        }
                        Err(e) => {
                            crate::error_limited!(error = %e, "stats accept failed");
                            std::thread::sleep(POLL);
                            continue;
                        }
                    };
                    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS {
                        active.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    let (serve, done, flag) = (serve.clone(), active.clone(), flag.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name(conn_name.clone())
                            .spawn(move || {
                                serve(conn, &flag);
                                done.fetch_sub(1, Ordering::AcqRel);
                            });
                    if let Err(e) = spawned {
                        active.fetch_sub(1, Ordering::AcqRel);
                        crate::error_limited!(error = %e, "cannot start a stats connection thread");
                    }
                }
            })?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting and joins the accept thread; connection threads end at their next read.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
