//! One client WebSocket session: reads `response.create` frames between turns and hands each to
//! the turn driver, whose events come back through [`WsSink`] as text frames.
//!
//! The session keeps its upstream connection across turns while it chains `store=false`
//! responses (they live only on the connection that produced them); the driver gives it back
//! between stored turns. While a turn runs the sink watches the client: a disconnect ends the
//! turn at once, a new `response.create` preempts it.

use std::rc::Rc;
use std::time::Instant;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};

use crate::runtime::{self, TcpStream};
use crate::usage::RequestType;

use super::auth::ClientIdentity;
use super::counters::{add, bump, ShardCounters};
use super::relay::{ClientSignal, ClientSink, Gone, TurnError};
use super::turn::{Driver, TurnEnd};
use super::Shard;

/// The client side of a session.
pub type ClientWs = WebSocketStream<TcpStream>;

/// One client session.
pub struct Session {
    shard: Rc<Shard>,
    client: ClientWs,
    driver: Driver,
}

impl Session {
    /// A session over an upgraded client socket.
    pub fn new(
        shard: Rc<Shard>,
        client: ClientWs,
        identity: ClientIdentity,
        forward: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        Session {
            driver: Driver::new(shard.clone(), identity, forward, RequestType::Ws),
            shard,
            client,
        }
    }

    /// Runs the session to its end. The upstream connection goes back to the pool only if the
    /// last turn ended cleanly.
    pub async fn run(mut self) {
        self.serve().await;
        self.driver.release();
    }

    async fn serve(&mut self) {
        let cfg = &self.shard.config.server;
        let (first_wait, idle_wait) = (cfg.first_message_timeout, cfg.idle_timeout);
        let mut first = true;
        loop {
            let wait = if first { first_wait } else { idle_wait };
            let msg = match runtime::timeout(wait, self.client.next()).await {
                None if first => {
                    close_with(
                        &mut self.client,
                        CloseCode::Policy,
                        "missing first response.create message",
                    )
                    .await;
                    return;
                }
                None => {
                    close_with(
                        &mut self.client,
                        CloseCode::Normal,
                        "websocket idle timeout",
                    )
                    .await;
                    return;
                }
                Some(None) => return,
                Some(Some(Err(e))) => {
                    on_client_error(&mut self.client, &self.shard.counters, e).await;
                    return;
                }
                Some(Some(Ok(msg))) => msg,
            };
            let frame = match msg {
                Message::Text(t) => Bytes::from(t),
                Message::Binary(b) => b,
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            first = false;
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                add(&self.shard.counters.bytes_in, frame.len() as u64);
                let mut sink = WsSink {
                    client: &mut self.client,
                    counters: &self.shard.counters,
                };
                match self.driver.run(&mut sink, frame, Instant::now()).await {
                    TurnEnd::Done => {}
                    TurnEnd::Preempted(f) => next = Some(f),
                    TurnEnd::ClientGone => return,
                }
            }
        }
    }
}

/// Events to a client WebSocket: fed as text frames, written in one flush per batch.
pub struct WsSink<'a> {
    client: &'a mut ClientWs,
    counters: &'a ShardCounters,
}

impl ClientSink for WsSink<'_> {
    async fn feed(&mut self, event: Utf8Bytes, _event_type: &str) -> Result<(), Gone> {
        add(&self.counters.bytes_out, event.len() as u64);
        self.client
            .feed(Message::Text(event))
            .await
            .map_err(|_| Gone)
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        self.client.flush().await.map_err(|_| Gone)
    }

    async fn signal(&mut self) -> ClientSignal {
        loop {
            match self.client.next().await {
                Some(Ok(Message::Text(t))) => return ClientSignal::Frame(Bytes::from(t)),
                Some(Ok(Message::Binary(b))) => return ClientSignal::Frame(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return ClientSignal::Gone,
                Some(Err(e)) => {
                    on_client_error(self.client, self.counters, e).await;
                    return ClientSignal::Gone;
                }
            }
        }
    }

    async fn fail(&mut self, error: &TurnError) -> Result<(), Gone> {
        self.client
            .send(Message::text(error.event.clone()))
            .await
            .map_err(|_| Gone)
    }
}

async fn on_client_error(client: &mut ClientWs, counters: &ShardCounters, e: WsError) {
    if matches!(e, WsError::Capacity(_)) {
        bump(&counters.oversize_messages);
        close_with(client, CloseCode::Size, "message too big").await;
    }
}

async fn close_with(client: &mut ClientWs, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = runtime::timeout(std::time::Duration::from_secs(1), client.close(Some(frame))).await;
}
