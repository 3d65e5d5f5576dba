//! Shared harness for end-to-end tests: a mock upstream, a gateway in this process, and a
//! blocking WebSocket/HTTP client over real loopback sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use shardgate::config::Config;
use shardgate::gateway::Gateway;
use shardgate::mock::{MockConfig, MockHandle};
use shardgate::tungstenite::{self, client::IntoClientRequest, Message};

/// The client key every test config accepts.
pub const CLIENT_KEY: &str = "sk-gw-test";
/// The account key every test account sends upstream.
pub const ACCOUNT_KEY: &str = "sk-upstream-test";

/// Starts a mock upstream with defaults.
pub fn mock() -> MockHandle {
    shardgate::mock::start(MockConfig::default()).expect("mock starts")
}

/// A config with one client key and one account per base URL.
pub fn config_for(base_urls: &[String], extra: &str) -> Config {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\n{extra}\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n"
    );
    for (i, url) in base_urls.iter().enumerate() {
        text.push_str(&format!(
            "[[accounts]]\nid = \"acct-{i}\"\nbase_url = \"{url}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 8\n"
        ));
    }
    parse_config(&text)
}

/// A path in a fresh scratch directory of this test process (never the working directory).
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shardgate-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// Parses a config text as-is.
pub fn parse_config(text: &str) -> Config {
    let mut text = text.to_string();
    if !text.contains("[usage]") {
        text.push_str(&format!(
            "\n[usage]\npath = \"{}\"\n",
            scratch_file("usage.jsonl").display()
        ));
    }
    Config::parse(&text, &|_| None).expect("test config is valid")
}

/// Starts a gateway in this process.
pub fn gateway(config: Config) -> Gateway {
    Gateway::start(config).expect("gateway starts")
}

/// A blocking WebSocket client session.
pub struct Client {
    pub ws: tungstenite::WebSocket<TcpStream>,
}

/// Connects to `/v1/responses` with the test key.
pub fn connect(addr: SocketAddr) -> Client {
    connect_with_key(addr, CLIENT_KEY).expect("upgrade succeeds")
}

/// Connects with a given key; the error carries the HTTP status on refusal.
pub fn connect_with_key(addr: SocketAddr, key: &str) -> Result<Client, tungstenite::Error> {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = format!("ws://{addr}/v1/responses").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req.headers_mut()
        .insert("session-id", "sess-test".parse().unwrap());
    let (ws, _) = tungstenite::client::client(req, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
    })?;
    Ok(Client { ws })
}

/// What one turn produced, as the client saw it.
#[derive(Debug, Default)]
pub struct Turn {
    pub events: Vec<sonic_rs::Value>,
}

impl Turn {
    pub fn last_type(&self) -> String {
        self.events.last().map(event_type).unwrap_or_default()
    }
    pub fn types(&self) -> Vec<String> {
        self.events.iter().map(event_type).collect()
    }
    pub fn response_id(&self) -> Option<String> {
        use sonic_rs::JsonValueTrait;
        self.events.iter().rev().find_map(|e| {
            e.get("response")
                .and_then(|r| r.get("id"))
                .and_then(|v| v.as_str().map(str::to_owned))
        })
    }
    /// The mock connection id that served this turn (from `resp_c{N}t...`).
    pub fn conn_id(&self) -> Option<u64> {
        conn_of(&self.response_id()?)
    }
    pub fn error_code(&self) -> Option<String> {
        use sonic_rs::JsonValueTrait;
        self.events.iter().find_map(|e| {
            (event_type(e) == "error")
                .then(|| {
                    e.get("error")
                        .and_then(|x| x.get("code"))
                        .and_then(|c| c.as_str().map(str::to_owned))
                })
                .flatten()
        })
    }
    pub fn usage_field(&self, name: &str) -> Option<u64> {
        use sonic_rs::JsonValueTrait;
        self.events
            .last()?
            .get("response")?
            .get("usage")?
            .get(name)?
            .as_u64()
    }
}

/// The connection id inside a mock response id.
pub fn conn_of(response_id: &str) -> Option<u64> {
    let rest = response_id.strip_prefix("resp_c")?;
    let end = rest.find('t')?;
    rest[..end].parse().ok()
}

pub fn event_type(e: &sonic_rs::Value) -> String {
    use sonic_rs::JsonValueTrait;
    e.get("type")
        .and_then(|t| t.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn is_terminal(t: &str) -> bool {
    matches!(
        t,
        "response.completed"
            | "response.failed"
            | "response.incomplete"
            | "response.cancelled"
            | "error"
    )
}

impl Client {
    pub fn send(&mut self, frame: &str) {
        self.ws.send(Message::text(frame)).expect("send frame");
    }

    /// Reads events until a terminal one (or `error`).
    pub fn read_turn(&mut self) -> Turn {
        let mut turn = Turn::default();
        loop {
            let msg = self.ws.read().expect("read event");
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(f) => panic!("closed mid-turn: {f:?}; got {:?}", turn.types()),
                _ => continue,
            };
            let v: sonic_rs::Value = sonic_rs::from_str(text.as_str()).expect("event is JSON");
            let t = event_type(&v);
            turn.events.push(v);
            if is_terminal(&t) {
                return turn;
            }
        }
    }

    /// Sends a `response.create` and reads its turn.
    pub fn turn(&mut self, frame: &str) -> Turn {
        self.send(frame);
        self.read_turn()
    }

    /// Reads until the server closes; returns the close code.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// A `response.create` frame.
pub fn create(model: &str, input: &str, store: bool, previous: Option<&str>) -> String {
    let prev = previous
        .map(|p| format!(",\"previous_response_id\":\"{p}\""))
        .unwrap_or_default();
    format!(
        r#"{{"type":"response.create","model":"{model}","store":{store},"input":[{{"type":"message","role":"user","content":[{{"type":"input_text","text":"{input}"}}]}}]{prev}}}"#
    )
}

/// A plain HTTP request; returns (status, headers+body text).
pub fn http(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(raw.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The body of an HTTP response text.
pub fn body_of(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}
