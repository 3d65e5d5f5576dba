//! Cross-shard handoff of a client connection.
//!
//! When a request must run where its state lives (a `store=false` chain whose upstream
//! connection is on another shard), the shard that accepted the client gives the connection
//! away: the socket's descriptor, the bytes it already read from it, and whatever the caller
//! wants the owner to know (`M`: the parsed first frame, the client's key…). The owner adopts
//! the socket and reads the prefix back before anything new ([`PrefixedStream`]), as if it had
//! accepted the connection itself.
//!
//! Transport: glommio shared channels, one single-producer channel per ordered pair of shards,
//! built before the executors start ([`mesh`]) and connected on each shard ([`HandoffPort::connect`]).
//! Sends never wait: a full channel gives the connection back to the caller, who serves it
//! locally (the store=false chain then takes the recovery path).

use std::io;
use std::os::fd::OwnedFd;

use crate::net::{ClientStream, PrefixedStream};
use crate::runtime::{
    self, ShardReceiver, ShardSendError, ShardSender, UnboundShardReceiver, UnboundShardSender,
};

/// Connections that may wait in one shard-to-shard channel.
pub const CHANNEL_CAPACITY: usize = 256;

/// A client connection in transit between shards.
pub struct HandedConn<M> {
    fd: OwnedFd,
    prefix: Vec<u8>,
    /// What the sending shard passes along with the socket.
    pub meta: M,
}

impl<M> HandedConn<M> {
    /// Detaches `stream` from this shard; `prefix` holds the bytes already read from it, in
    /// order, that the owner must see first. On failure everything comes back, so the caller
    /// serves the connection itself. A TLS connection never detaches: its TLS state lives in
    /// this shard's memory, and the socket alone would be garbage to another shard.
    pub fn new(
        stream: ClientStream,
        prefix: Vec<u8>,
        meta: M,
    ) -> Result<Self, Box<DetachFailed<M>>> {
        let tcp = match stream {
            ClientStream::Plain(tcp) => tcp,
            tls @ ClientStream::Tls(_) => {
                return Err(Box::new(DetachFailed {
                    error: io::Error::new(
                        io::ErrorKind::Unsupported,
                        "a TLS connection cannot move to another shard",
                    ),
                    stream: tls,
                    prefix,
                    meta,
                }))
            }
        };
        match runtime::detach_stream(tcp) {
            Ok(fd) => Ok(HandedConn { fd, prefix, meta }),
            Err((error, tcp)) => Err(Box::new(DetachFailed {
                error,
                stream: ClientStream::Plain(*tcp),
                prefix,
                meta,
            })),
        }
    }

    /// Adopts the connection on the current shard: the stream replays the prefix, then reads
    /// the socket. Also how a connection whose handoff failed is served where it is.
    pub fn resume(self) -> (PrefixedStream<ClientStream>, M) {
        let stream = ClientStream::Plain(runtime::adopt_stream(self.fd));
        (PrefixedStream::new(self.prefix, stream), self.meta)
    }
}

impl<M> std::fmt::Debug for HandedConn<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedConn")
            .field("fd", &self.fd)
            .field("prefix_len", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

/// A connection that could not be detached, handed back whole.
pub struct DetachFailed<M> {
    /// Why (the descriptor could not be duplicated).
    pub error: io::Error,
    /// The connection, still on this shard.
    pub stream: ClientStream,
    /// The bytes already read.
    pub prefix: Vec<u8>,
    /// The metadata.
    pub meta: M,
}

/// Why a handoff did not happen; the connection comes back with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The owner's channel is full.
    #[error("the owner shard's handoff channel is full")]
    Full,
    /// The owner shard is gone.
    #[error("the owner shard is gone")]
    Closed,
    /// No such shard, or it is this one.
    #[error("no other shard with that number")]
    NoSuchShard,
}

/// One shard's unconnected ends of the handoff mesh. `Send`: built on the main thread, moved
/// into the shard's executor, connected there.
pub struct HandoffPort<M: Send> {
    shard: usize,
    senders: Vec<Option<UnboundShardSender<Slot<M>>>>,
    receivers: Vec<UnboundShardReceiver<Slot<M>>>,
}

/// What a handoff channel carries. Boxed: glommio allocates every slot of a channel up front,
/// and there are shards × (shards − 1) channels for a path taken only on reconnects, so a slot
/// is a pointer rather than a whole connection.
type Slot<M> = Box<HandedConn<M>>;

/// Builds the handoff mesh of `shards` shards: element `i` is shard `i`'s port.
pub fn mesh<M: Send>(shards: usize, capacity: usize) -> Vec<HandoffPort<M>> {
    let mut ports: Vec<HandoffPort<M>> = (0..shards)
        .map(|shard| HandoffPort {
            shard,
            senders: (0..shards).map(|_| None).collect(),
            receivers: Vec::new(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from == to {
                continue;
            }
            let (tx, rx) = runtime::shard_channel(capacity);
            ports[from].senders[to] = Some(tx);
            ports[to].receivers.push(rx);
        }
    }
    ports
}

impl<M: Send + 'static> HandoffPort<M> {
    /// Connects every end on the current shard. Completes when every other shard connected its
    /// port too (all ends are connected concurrently, so shards may start in any order).
    pub async fn connect(self) -> (Handoff<M>, HandoffInbox<M>) {
        let senders =
            futures_util::future::join_all(self.senders.into_iter().map(|tx| async move {
                match tx {
                    Some(tx) => Some(runtime::connect_sender(tx).await),
                    None => None,
                }
            }));
        let receivers = futures_util::future::join_all(
            self.receivers.into_iter().map(runtime::connect_receiver),
        );
        let (senders, receivers) = futures_util::future::join(senders, receivers).await;
        (
            Handoff {
                shard: self.shard,
                senders,
            },
            HandoffInbox { receivers },
        )
    }
}

/// This shard's senders to every other shard.
pub struct Handoff<M: Send> {
    shard: usize,
    senders: Vec<Option<ShardSender<Slot<M>>>>,
}

impl<M: Send> Handoff<M> {
    /// This shard's number.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Hands `conn` to shard `to` without waiting; on failure the connection comes back so the
    /// caller can serve it here ([`HandedConn::resume`]).
    pub fn send(
        &self,
        to: usize,
        conn: HandedConn<M>,
    ) -> Result<(), (HandoffError, HandedConn<M>)> {
        let Some(Some(tx)) = self.senders.get(to) else {
            return Err((HandoffError::NoSuchShard, conn));
        };
        runtime::try_send_to_shard(tx, Box::new(conn)).map_err(|(e, conn)| {
            let e = match e {
                ShardSendError::Full => HandoffError::Full,
                ShardSendError::Closed => HandoffError::Closed,
            };
            (e, *conn)
        })
    }
}

/// Connections other shards hand to this one.
pub struct HandoffInbox<M: Send> {
    receivers: Vec<ShardReceiver<Slot<M>>>,
}

impl<M: Send + 'static> HandoffInbox<M> {
    /// Calls `on_conn` for every connection handed to this shard, until every sender is gone.
    /// `on_conn` should spawn the connection's task and return at once.
    pub async fn run(self, on_conn: impl Fn(HandedConn<M>)) {
        let on_conn = &on_conn;
        futures_util::future::join_all(self.receivers.into_iter().map(|rx| async move {
            while let Some(conn) = rx.recv().await {
                on_conn(*conn);
            }
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_gives_each_shard_a_sender_to_every_other_shard() {
        let ports = mesh::<u32>(3, 4);
        for (i, p) in ports.iter().enumerate() {
            assert_eq!(p.shard, i);
            assert!(p.senders[i].is_none());
            assert_eq!(p.senders.iter().flatten().count(), 2);
            assert_eq!(p.receivers.len(), 2);
        }
    }
}
