//! A WebSocket connection between turns: the mock's own pings (`ping_every`), its idle cut
//! (`idle_cut`), and pings left unanswered (`ignore_pings`).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::StreamExt;

use super::state::Shared;

/// A stream whose writes are swallowed while muted: tungstenite answers every ping it reads
/// with a pong of its own accord, so a peer that does not answer is one whose answers vanish.
/// Muted only between turns, where nothing but pongs and close replies is written.
pub struct Mutable<S> {
    inner: S,
    muted: Rc<Cell<bool>>,
}

impl<S> Mutable<S> {
    /// Wraps `inner`; writes are swallowed while `muted` holds `true`.
    pub fn new(inner: S, muted: Rc<Cell<bool>>) -> Self {
        Mutable { inner, muted }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Mutable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Mutable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.muted.get() {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// When a connection last heard from its peer and when it pings next.
pub struct IdleClock {
    heard: Instant,
    next_ping: Option<Instant>,
}

impl IdleClock {
    /// A clock for a connection just opened.
    pub fn new(shared: &Shared) -> Self {
        let now = Instant::now();
        IdleClock {
            heard: now,
            next_ping: shared.cfg.ping_every.map(|every| now + every),
        }
    }

    /// A turn ended: the connection's silence counts from now.
    pub fn turn_ended(&mut self) {
        self.heard = Instant::now();
    }
}

/// The next message of a connection between turns (`None`: the connection is over, cut for
/// silence or gone), pinging it when due. Pings and pongs received are counted; the pongs
/// tungstenite owes go unsent while the script says `ignore_pings`.
pub async fn next_message<S>(
    ws: &mut WebSocketStream<Mutable<S>>,
    shared: &Shared,
    clock: &mut IdleClock,
    muted: &Cell<bool>,
) -> Option<Result<Message, WsError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        muted.set(shared.script(|q| q.ignore_pings()));
        let cut_at = shared.cfg.idle_cut.map(|cut| clock.heard + cut);
        let wake_at = match (cut_at, clock.next_ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = match wake_at {
            None => Some(ws.next().await),
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                crate::runtime::timeout(wait, ws.next()).await
            }
        };
        muted.set(false);
        match next {
            Some(message) => {
                clock.heard = Instant::now();
                match &message {
                    Some(Ok(Message::Ping(_))) => shared.record(|s| s.ws_pings_received += 1),
                    Some(Ok(Message::Pong(_))) => shared.record(|s| s.ws_pongs_received += 1),
                    _ => {}
                }
                return message;
            }
            None if cut_at.is_some_and(|at| at <= Instant::now()) => {
                shared.record(|s| s.ws_idle_cuts += 1);
                return None;
            }
            None => {
                if let Some(every) = shared.cfg.ping_every {
                    clock.next_ping = Some(Instant::now() + every);
                }
                if ws.send(Message::Ping("mock".into())).await.is_err() {
                    return None;
                }
                shared.record(|s| s.ws_pings_sent += 1);
            }
        }
    }
}
