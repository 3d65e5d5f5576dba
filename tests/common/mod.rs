//! Shared harness for end-to-end tests: a mock upstream, a gateway in this process, and a
//! blocking WebSocket/HTTP client over real loopback sockets.
#![allow(dead_code)]

pub mod counting;
pub mod heap;
pub mod private_redis;
pub mod raw_ws;

use std::io::{BufRead, Read, Write};
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

/// Polls `cond` with a short backoff (5 ms doubling to 100 ms) until it holds or `timeout`
/// passes; `true` if it held. For a test that asserts with its own message afterwards.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits for a state the gateway or the mock reaches (a counter, a log line, a file's
/// contents) instead of sleeping for a guessed time: polls `cond` until it holds, and panics
/// naming `what` and the time waited if it does not within `timeout`. Timeouts are generous
/// (the test machine is shared); a passing test waits only as long as the state takes.
pub fn eventually(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    if !poll_until(timeout, cond) {
        panic!("{what}: still not the case after {:?}", start.elapsed());
    }
}

/// The body of `GET path` on a gateway's admin listener.
pub fn admin_body(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("admin request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("admin reply");
    body_of(&out).to_string()
}

/// The sum over shards of the gateway counter or gauge (`*_open`) `name` in `/metrics`
/// (shards ship their counters every `stats_interval_ms`).
pub fn metric_total(admin: SocketAddr, name: &str) -> u64 {
    let counter = format!("shardgate_{name}_total{{shard=");
    let gauge = format!("shardgate_{name}{{shard=");
    admin_body(admin, "/metrics")
        .lines()
        .filter(|l| l.starts_with(&counter) || l.starts_with(&gauge))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The sum over shards of the labeled counter `family{label}` in `/metrics`.
pub fn labeled_total(admin: SocketAddr, family: &str, label: &str) -> u64 {
    let prefix = format!("shardgate_{family}_total{{");
    let needle = format!("label=\"{label}\"}}");
    admin_body(admin, "/metrics")
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Starts a mock upstream with defaults.
pub fn mock() -> MockHandle {
    shardgate::mock::start(MockConfig::default()).expect("mock starts")
}

/// A config with one client key and one account per base URL.
pub fn config_for(base_urls: &[String], extra: &str) -> Config {
    let drain = drain_line(extra);
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\n{drain}{extra}\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n"
    );
    for (i, url) in base_urls.iter().enumerate() {
        text.push_str(&format!(
            "[[accounts]]\nid = \"acct-{i}\"\nbase_url = \"{url}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 8\n"
        ));
    }
    parse_config(&text)
}

/// A short drain for test gateways (a stop in the middle of a stalled turn waits at most this),
/// unless the test sets its own.
fn drain_line(extra: &str) -> &'static str {
    if extra.contains("drain_timeout_secs") {
        ""
    } else {
        "drain_timeout_secs = 5\n"
    }
}

/// A path in a fresh scratch directory (never the working directory) under cargo's
/// `target/tmp`, so runs do not pile folders into `/tmp` (`scripts/test.sh` empties it first).
/// The directory's name is random: named by process id, a directory left by an earlier run whose
/// process had the same id was reused, and a usage file appended to it held that run's records.
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("shardgate-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch dir")
        .keep();
    dir.join(name)
}

/// The Redis the test command provides (`REDIS_URL`, exported by `scripts/test.sh`), else the
/// default local one.
pub fn shared_redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
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
    connect_over(TcpStream::connect(addr).expect("tcp connect"), addr, key)
}

/// A connection with a 4 KiB receive buffer, for clients that stop reading: a few KB of unread
/// data fill it, so the gateway's writes block soon.
pub fn slow_reader(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// Upgrades an already connected socket (e.g. one with small buffers) to a client session.
pub fn connect_over(
    stream: TcpStream,
    addr: SocketAddr,
    key: &str,
) -> Result<Client, tungstenite::Error> {
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

/// Connects with key `key` and the `session-id` header `session` (none when `None`): a client
/// that is one of several conversations, or one that sends no session-id.
pub fn connect_session(addr: SocketAddr, key: &str, session: Option<&str>) -> Client {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = format!("ws://{addr}/v1/responses")
        .into_client_request()
        .expect("request");
    let headers = req.headers_mut();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    if let Some(s) = session {
        headers.insert("session-id", s.parse().expect("a header value"));
    }
    let (ws, _) = tungstenite::client::client(req, stream).expect("upgrade succeeds");
    Client { ws }
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

/// One HTTP response read off a keep-alive connection.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> sonic_rs::Value {
        sonic_rs::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The SSE records of the body: (event, data as JSON).
    pub fn sse(&self) -> Vec<(String, sonic_rs::Value)> {
        let mut out = Vec::new();
        for block in self.body.split("\n\n") {
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !data.is_empty() {
                let v = sonic_rs::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
                out.push((event, v));
            }
        }
        out
    }
}

/// A blocking HTTP/1.1 client connection that can carry several requests.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `POST path` with a JSON body (Content-Length) and the test key.
    pub fn post(&mut self, path: &str, body: &str) -> HttpReply {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.raw(raw.as_bytes())
    }

    /// Writes raw bytes and reads one response.
    pub fn raw(&mut self, bytes: &[u8]) -> HttpReply {
        self.stream.write_all(bytes).expect("write");
        self.read_reply()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one response (Content-Length, chunked, or until close).
    pub fn read_reply(&mut self) -> HttpReply {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            assert!(self.fill(), "connection closed before a response head");
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if (100..200).contains(&status) || status == 204 {
            Vec::new()
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    assert!(self.fill(), "closed mid-chunk");
                };
                let size_line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill(), "closed mid-chunk");
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
            body
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                assert!(self.fill(), "closed mid-body");
            }
            self.buf.drain(..len).collect()
        } else {
            while self.fill() {}
            std::mem::take(&mut self.buf)
        };
        HttpReply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        }
    }
}

/// A POST body for `/v1/responses`.
pub fn post_body(model: &str, input: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"input":[{{"type":"message","role":"user","content":[{{"type":"input_text","text":"{input}"}}]}}]}}"#
    )
}

/// A config with one account per base URL, each with its own key (`sk-upstream-<i>`) and extra
/// account lines (e.g. `transport = "http"`).
pub fn config_accounts(base_urls: &[String], extra: &str, account_extra: &str) -> Config {
    let drain = drain_line(extra);
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n{drain}{extra}\n[[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n"
    );
    for (i, url) in base_urls.iter().enumerate() {
        text.push_str(&format!(
            "[[accounts]]\nid = \"acct-{i}\"\nbase_url = \"{url}\"\napi_key = \"sk-upstream-{i}\"\nmax_conns = 4\n{account_extra}\n"
        ));
    }
    parse_config(&text)
}

/// The real binary, started with a config file; `addr` is the address it printed.
pub struct Served {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The config file it was started with, if any (rewrite it, then SIGHUP, to reload).
    pub config_path: std::path::PathBuf,
}

/// Starts `shardgate serve --config FILE` with `config` written to a scratch file.
pub fn serve_binary(config: &str) -> Served {
    serve_binary_logging(config, None)
}

/// As [`serve_binary`], with the binary's log (stderr) written to `log` when given (a test
/// waits on its lines).
pub fn serve_binary_logging(config: &str, log: Option<&std::path::Path>) -> Served {
    let path = scratch_file("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut served = start_binary_logging(
        &["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        &[],
        log,
    );
    served.config_path = path;
    served
}

/// How many lines of the file at `path` contain `needle` (0 while it does not exist).
pub fn lines_containing(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Starts the binary with `args` (and extra environment) and waits for its listening banner.
pub fn start_binary(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Served {
    start_binary_logging(args, env, None)
}

/// As [`start_binary`], with the binary's log (stderr) written to `log` when given.
pub fn start_binary_logging(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
    log: Option<&std::path::Path>,
) -> Served {
    // Always kept, so a gateway that fails to start says why in the test's panic message.
    let log_path = log.map_or_else(|| scratch_file("gateway.log"), |p| p.to_path_buf());
    let stderr = std::process::Stdio::from(std::fs::File::create(&log_path).expect("log file"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("gateway binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("banner");
    let addr = line
        .trim()
        .strip_prefix("shardgate listening on ")
        .and_then(|a| {
            a.strip_prefix("http://")
                .or_else(|| a.strip_prefix("https://"))
        })
        .and_then(|a| a.strip_suffix("/v1"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("unexpected banner {line:?}; the gateway's log:\n{log}")
        });
    Served {
        child,
        addr,
        config_path: std::path::PathBuf::new(),
    }
}

impl Served {
    /// Sends `signal` to the gateway (SIGHUP to reload, SIGTERM to stop).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Stops the gateway with SIGTERM and waits (up to 10 s) for it to exit: it drains, flushes
    /// its usage records and its log.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut status = None;
        eventually("the gateway stopped", Duration::from_secs(20), || {
            status = self.child.try_wait().expect("wait");
            status.is_some()
        });
        status.expect("stopped above")
    }
}

impl Drop for Served {
    /// A failed test does not leave its gateway running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mock upstream in its own process: its side of every upstream connection must not count.
pub struct MockProcess {
    child: std::process::Child,
    port: u16,
}

impl MockProcess {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["mock-upstream", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mock binary starts");
        let mock = MockProcess { child, port };
        eventually(
            &format!("the mock upstream listens on {port}"),
            Duration::from_secs(20),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        mock
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Upstream WebSocket connections the mock has open.
    pub fn ws_connections_open(&self) -> u64 {
        use sonic_rs::JsonValueTrait;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (status, reply) = http(
            addr,
            "GET /_mock/stats HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n",
        );
        assert_eq!(status, 200, "mock stats: {reply}");
        let stats: sonic_rs::Value = sonic_rs::from_str(body_of(&reply)).expect("stats JSON");
        // This request is one of the open connections, and not a WebSocket.
        stats["connections_open"]
            .as_u64()
            .expect("connections_open")
            - 1
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
