//! TLS on the client listener, against the real binary over loopback: a WebSocket session and
//! a `POST` work over TLS with ALPN `http/1.1`; rotating the certificate files and sending
//! SIGHUP serves the new certificate to new connections while an open session goes on; a
//! plain-HTTP client gets a clean refusal and the gateway keeps serving; a TLS session is never
//! handed to another shard.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_rustls::rustls::{self, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::{CertificateDer, ServerName};
use shardgate::tungstenite::{self, client::IntoClientRequest};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` written to `dir`; returns its DER.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    // Written whole to a temporary name, then renamed: a reload never reads half a file.
    for (name, pem) in [
        ("cert.pem", certified.cert.pem()),
        ("key.pem", certified.signing_key.serialize_pem()),
    ] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    certified.cert.der().clone()
}

fn config_text(dir: &Path, base_url: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 2\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"k\"\n\
         [[accounts]]\nid = \"a\"\nbase_url = \"{base_url}\"\napi_key = \"{ACCOUNT_KEY}\"\n\
         [usage]\npath = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        dir.join("usage.jsonl").display(),
    )
}

/// A TLS client trusting `trusted`, offering `alpn`.
fn tls_connect(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The certificate the server presented.
fn presented(stream: &TlsStream) -> CertificateDer<'static> {
    stream.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// A WebSocket session over an established TLS connection.
fn ws_over(stream: TlsStream, addr: SocketAddr) -> tungstenite::WebSocket<TlsStream> {
    let mut req = format!("wss://localhost:{}/v1/responses", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {CLIENT_KEY}").parse().unwrap(),
    );
    tungstenite::client::client(req, stream).unwrap().0
}

/// Sends a `response.create` and reads to its terminal event; returns the terminal type.
fn ws_turn(ws: &mut tungstenite::WebSocket<TlsStream>, input: &str) -> String {
    ws.send(tungstenite::Message::text(create(
        "gpt-5", input, false, None,
    )))
    .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            let v: sonic_rs::Value = sonic_rs::from_str(t.as_str()).unwrap();
            let ty = event_type(&v);
            if ty.starts_with("response.completed") || ty == "error" || ty == "response.failed" {
                return ty;
            }
        }
    }
}

fn scratch_dir() -> PathBuf {
    scratch_file("x").parent().unwrap().to_path_buf()
}

#[test]
fn websocket_and_post_over_tls_with_alpn_http11() {
    let up = mock();
    let dir = scratch_dir();
    let cert = write_cert(&dir);
    let served = serve_binary(&config_text(&dir, &up.base_url()));

    let stream = tls_connect(
        served.addr,
        std::slice::from_ref(&cert),
        &[b"h2", b"http/1.1"],
    )
    .unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut ws = ws_over(stream, served.addr);
    assert_eq!(ws_turn(&mut ws, "hello"), "response.completed");
    assert_eq!(ws_turn(&mut ws, "again"), "response.completed");

    let mut stream = tls_connect(served.addr, std::slice::from_ref(&cert), &[b"http/1.1"]).unwrap();
    let body = post_body("gpt-5", "hi", false);
    write!(
        stream,
        "POST /v1/responses HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"status\":\"completed\""), "{reply}");

    // A streaming POST: SSE over TLS to its terminal event.
    let mut stream = tls_connect(served.addr, std::slice::from_ref(&cert), &[]).unwrap();
    let body = post_body("gpt-5", "hi", true);
    write!(
        stream,
        "POST /v1/responses HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("text/event-stream"), "{reply}");
    assert!(reply.contains("response.completed"), "{reply}");

    // A client that speaks only h2 finds no common protocol: refused in the handshake.
    assert!(tls_connect(served.addr, &[cert], &[b"h2"]).is_err());
}

#[test]
fn sighup_serves_a_rotated_certificate_to_new_connections_and_open_sessions_go_on() {
    let up = mock();
    let dir = scratch_dir();
    let old = write_cert(&dir);
    let (config, log) = (dir.join("gateway.toml"), dir.join("gateway.log"));
    std::fs::write(&config, config_text(&dir, &up.base_url())).unwrap();
    let served = start_binary_logging(
        &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
        &[],
        Some(&log),
    );

    let stream = tls_connect(served.addr, std::slice::from_ref(&old), &[b"http/1.1"]).unwrap();
    let mut open = ws_over(stream, served.addr);
    assert_eq!(ws_turn(&mut open, "before"), "response.completed");

    let new = write_cert(&dir);
    assert_ne!(old, new);
    served.signal(libc::SIGHUP);
    let trusted = [old.clone(), new.clone()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = tls_connect(served.addr, &trusted, &[b"http/1.1"]).unwrap();
        if presented(&stream) == new {
            let mut fresh = ws_over(stream, served.addr);
            assert_eq!(ws_turn(&mut fresh, "new cert"), "response.completed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never served the new certificate"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ws_turn(&mut open, "after"),
        "response.completed",
        "a session opened before the reload goes on"
    );

    // A reload whose key does not load is refused whole, naming the file: the new certificate
    // stays in force.
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    served.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("reload refused")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no refusal logged: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        refusal.contains("server.tls_key") && refusal.contains("key.pem"),
        "{refusal}"
    );
    let stream = tls_connect(served.addr, &trusted, &[b"http/1.1"]).unwrap();
    assert_eq!(presented(&stream), new);
}

#[test]
fn plain_http_on_the_tls_port_is_refused_cleanly_and_tls_goes_on() {
    let up = mock();
    let dir = scratch_dir();
    let cert = write_cert(&dir);
    let served = serve_binary(&config_text(&dir, &up.base_url()));

    let (status, reply) = http(
        served.addr,
        "GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n",
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("tls_required"), "{reply}");

    // Garbage that is not HTTP either: the connection ends, nothing hangs.
    let mut raw = TcpStream::connect(served.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).ok();
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(
        !rest.starts_with(b"HTTP/"),
        "no HTTP answer to a broken TLS record"
    );

    let mut ws = ws_over(
        tls_connect(served.addr, &[cert], &[b"http/1.1"]).unwrap(),
        served.addr,
    );
    assert_eq!(ws_turn(&mut ws, "still serving"), "response.completed");
}

#[test]
fn missing_certificate_file_fails_the_start_naming_it() {
    let dir = scratch_dir();
    write_cert(&dir);
    std::fs::remove_file(dir.join("cert.pem")).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_text(&dir, "http://127.0.0.1:9")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.tls_cert") && err.contains("cert.pem"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.tls_cert") && err.contains("cert.pem"),
        "{err}"
    );
}

/// The `id` of the response a turn's terminal event carries.
fn ws_turn_id(ws: &mut tungstenite::WebSocket<TlsStream>, frame: &str) -> (String, String) {
    use sonic_rs::JsonValueTrait;
    ws.send(tungstenite::Message::text(frame)).unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            let v: sonic_rs::Value = sonic_rs::from_str(t.as_str()).unwrap();
            let ty = event_type(&v);
            if matches!(
                ty.as_str(),
                "response.completed" | "response.failed" | "error"
            ) {
                let id = v["response"]["id"]
                    .as_str()
                    .or(v["error"]["code"].as_str())
                    .unwrap_or_default()
                    .to_string();
                return (ty, id);
            }
        }
    }
}

#[test]
fn a_tls_session_chained_to_another_shard_is_served_where_it_landed() {
    let up = mock();
    let dir = scratch_dir();
    let cert = write_cert(&dir);
    let text = config_text(&dir, &up.base_url()).replace(
        "drain_timeout_secs = 2\n",
        "drain_timeout_secs = 2\nadmin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 50\n",
    );
    let gw = gateway(parse_config(&text));
    let (addr, admin) = (gw.addr(), gw.admin_addr().unwrap());
    // Connections spread over the two shards by their 4-tuple: some reconnections land on
    // the shard that does not hold their chain's upstream connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while labeled_total(admin, "handoff", "tls_local") == 0 {
        assert!(
            Instant::now() < deadline,
            "no reconnection landed on the other shard"
        );
        let mut first = ws_over(
            tls_connect(addr, std::slice::from_ref(&cert), &[]).unwrap(),
            addr,
        );
        let (ty, id) = ws_turn_id(&mut first, &create("gpt-5", "start", false, None));
        assert_eq!(ty, "response.completed");
        let _ = first.close(None);
        while first.read().is_ok() {}
        let mut next = ws_over(
            tls_connect(addr, std::slice::from_ref(&cert), &[]).unwrap(),
            addr,
        );
        // On the owner's shard the chain goes on; on the other one its connection is out of
        // reach (a TLS session cannot move), so upstream does not know the response.
        let (ty, code) = ws_turn_id(&mut next, &create("gpt-5", "go on", false, Some(&id)));
        assert!(
            ty == "response.completed" || code == "previous_response_not_found",
            "{ty} {code}"
        );
        let (ty, _) = ws_turn_id(&mut next, &create("gpt-5", "and on", false, None));
        assert_eq!(ty, "response.completed", "and the session goes on");
    }
    assert_eq!(
        labeled_total(admin, "handoff", "sent"),
        0,
        "a TLS session never moves"
    );
}
