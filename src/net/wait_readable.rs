//! Waiting for a stream's next bytes without reading them, so a reader holds no buffer while it
//! waits.
//!
//! A client session waits for its next frame far longer than it reads it, and there may be
//! thousands of idle sessions: a buffer a frame fits in cannot be held through that wait. A read
//! needs its buffer though, so a reader that cannot wait first reads a frame header into a small
//! stack buffer and then the rest into a large one, two `recv`s per frame. A stream that can
//! wait ([`WaitReadable`]) lets it take the large buffer only once bytes came, and read the
//! frame in one `recv`.
//!
//! Whether a stream can wait is a property of its type (and, for an enum of streams, of its
//! variant): plain TCP can (glommio's armed readiness poll, a shardgate patch), TLS cannot
//! (bytes on the socket need not make a record, and the TLS reader may hold plaintext already).

use std::io;
use std::task::{Context, Poll};

use crate::runtime::TcpStream;

/// A stream that can say when a read may find bytes without reading any.
pub trait WaitReadable {
    /// `true` when [`WaitReadable::poll_readable`] waits for the socket; `false` when it cannot
    /// wait without a read (it then answers `Ready` at once, and a reader should read as if
    /// it had no such call).
    fn can_wait_readable(&self) -> bool;

    /// `Ready` once a read may find bytes (or the end, or an error: the read tells); `Pending`
    /// while it surely finds none, the waker woken when that may change. A read can still find
    /// nothing after `Ready` (it then waits as reads do). Reads nothing, so a caller dropped
    /// while it waits loses nothing.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl WaitReadable for TcpStream {
    fn can_wait_readable(&self) -> bool {
        true
    }

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_readable(self, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::io::Write;
    use std::time::Duration;

    use futures_lite::AsyncReadExt;

    use crate::runtime::{spawn_executor, BoundListener};

    /// Over a real socket: `Ready` with no poll armed; after a read that left room in its
    /// buffer, `Pending` until the peer sends (woken then), and the wait takes no byte.
    #[test]
    fn a_socket_is_pending_while_its_armed_poll_is_and_its_bytes_stay_for_the_read() {
        let listener =
            BoundListener::bind("127.0.0.1:0".parse().expect("an address")).expect("a listener");
        let addr = listener.local_addr().expect("its address");
        let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"first").expect("send");
            sent_rx.recv().expect("the shard read the first bytes");
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"second").expect("send");
            sent_rx.recv().expect("the shard read the second bytes");
        });
        let (pending_before, second) = spawn_executor("readable-test", None, move || async move {
            let listener = crate::runtime::adopt_listener(listener);
            let mut s = crate::runtime::accept(&listener).await.expect("accept");
            poll_fn(|cx| s.poll_readable(cx)).await.expect("readable");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], b"first");
            sent_tx.send(()).expect("the peer waits");
            // The read left room: the poll is armed and nothing came yet.
            let pending_before = std::future::poll_fn(|cx| Poll::Ready(s.poll_readable(cx)))
                .await
                .is_pending();
            poll_fn(|cx| s.poll_readable(cx)).await.expect("readable");
            poll_fn(|cx| s.poll_readable(cx))
                .await
                .expect("still readable");
            let n = s.read(&mut buf).await.expect("read");
            sent_tx.send(()).expect("the peer waits");
            (pending_before, buf[..n].to_vec())
        })
        .expect("executor starts")
        .join()
        .expect("the executor ran to the end");
        peer.join().expect("the peer ran");
        assert!(pending_before, "pending while nothing was sent");
        assert_eq!(second, b"second", "every byte left for the read");
    }
}
