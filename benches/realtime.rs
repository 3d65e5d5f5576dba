//! The per-event cost of the realtime relay on audio: one audio event read off one WebSocket,
//! accounted for (`Inspector`: type, payload length, the session's ledger) and written to the
//! other WebSocket, both ways: `response.output_audio.delta` upstream → client (read unmasked
//! as a client, written as a server) and `input_audio_buffer.append` client → upstream (read
//! masked as a server, written masked as a client). The sockets are in memory; the WebSocket
//! codec is tungstenite's, the one `async-tungstenite` drives in the gateway.
//!
//! Timed by criterion, then reported as `ALLOC <name>: <allocs>/op <bytes> B/op` (see
//! `benches/README.md`): the relay's steady state allocates nothing per audio event.

use std::cell::RefCell;
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::config::{ClientKey, Secret};
use shardgate::shard::auth::ClientAuth;
use shardgate::shard::realtime::{Billing, Inspector, Ledger};
use shardgate::tungstenite::protocol::{Role, WebSocket};
use shardgate::tungstenite::Message;

#[path = "alloc_counter.rs"]
mod alloc_counter;

#[global_allocator]
static ALLOC: alloc_counter::Counting = alloc_counter::Counting;

use alloc_counter::report_allocs;

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

/// A socket whose reads replay one encoded frame forever and whose writes are discarded.
struct Replay {
    frame: Vec<u8>,
    at: usize,
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.frame.len() - self.at);
        buf[..n].copy_from_slice(&self.frame[self.at..self.at + n]);
        self.at = (self.at + n) % self.frame.len();
        Ok(n)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `event` as `role` puts it on the wire (a client masks).
fn encoded(event: &str, role: Role) -> Vec<u8> {
    struct Out(Vec<u8>);
    impl Read for Out {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Ok(0)
        }
    }
    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut ws = WebSocket::from_raw_socket(Out(Vec::new()), role, None);
    ws.send(Message::text(event)).expect("encode");
    ws.into_inner().0
}

fn inspector() -> Inspector {
    let auth = ClientAuth::new(&[ClientKey {
        id: "k".into(),
        key: Secret::new("sk-bench".into()),
        group: "default".into(),
    }]);
    let billing = Billing {
        identity: auth.authenticate(b"sk-bench").expect("key").clone(),
        account: "acct-0".into(),
        model: "gpt-realtime".into(),
        instance: "bench".into(),
        shard: 0,
    };
    Inspector {
        ledger: RefCell::new(Ledger::new(billing, "sess_bench".into(), Box::new(drop))),
        models: None,
    }
}

/// 100 ms of 24 kHz PCM16 (4 800 bytes, 6 400 base64 characters), as OpenAI sends it.
fn audio_b64() -> String {
    base64::engine::general_purpose::STANDARD
        .encode((0..4800).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn relay_audio(c: &mut Criterion) {
    let audio = audio_b64();
    let delta = format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_CQ3x7Hk2mN9pL4vB8sT1r","response_id":"resp_CQ3x7Hk2mN9pL4vB","item_id":"item_CQ3x7Hk2mN9pL4vC","output_index":0,"content_index":0,"delta":"{audio}"}}"#
    );
    let append =
        format!(r#"{{"type":"input_audio_buffer.append","event_id":"evt_1","audio":"{audio}"}}"#);
    let ins = inspector();

    // Upstream → client: read as the gateway's upstream client, written as the client's server.
    let mut from_up = WebSocket::from_raw_socket(
        Replay {
            frame: encoded(&delta, Role::Server),
            at: 0,
        },
        Role::Client,
        None,
    );
    let mut to_client = WebSocket::from_raw_socket(
        Replay {
            frame: vec![0],
            at: 0,
        },
        Role::Server,
        None,
    );
    let mut down = || {
        let Message::Text(t) = from_up.read().expect("read") else {
            unreachable!("a text frame")
        };
        assert!(ins.from_upstream(t.as_bytes()).is_none());
        to_client.write(Message::Text(t)).expect("write");
        to_client.flush().expect("flush");
    };
    down();
    let name = "realtime/relay_output_audio_delta_4800b";
    c.bench_function(name, |b| b.iter(&mut down));
    report_allocs(name, &mut down);

    // Client → upstream: read masked as the client's server, written masked as upstream's client.
    let mut from_client = WebSocket::from_raw_socket(
        Replay {
            frame: encoded(&append, Role::Client),
            at: 0,
        },
        Role::Server,
        None,
    );
    let mut to_up = WebSocket::from_raw_socket(
        Replay {
            frame: vec![0],
            at: 0,
        },
        Role::Client,
        None,
    );
    let mut up = || {
        let Message::Text(t) = from_client.read().expect("read") else {
            unreachable!("a text frame")
        };
        assert!(ins.from_client(t.as_bytes()).is_none());
        to_up.write(Message::Text(t)).expect("write");
        to_up.flush().expect("flush");
    };
    up();
    let name = "realtime/relay_input_audio_append_4800b";
    c.bench_function(name, |b| b.iter(&mut up));
    report_allocs(name, &mut up);

    let name = "realtime/inspect_output_audio_delta";
    c.bench_function(name, |b| {
        b.iter(|| ins.from_upstream(black_box(delta.as_bytes())))
    });
    report_allocs(name, || ins.from_upstream(black_box(delta.as_bytes())));
}

criterion_group! {
    name = benches;
    config = config();
    targets = relay_audio
}
criterion_main!(benches);
