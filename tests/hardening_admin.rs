//! The admin listener and the stats socket against slow and idle peers (issue 10, item 7): a
//! `/metrics` scrape and `shardgate stats` succeed while dozens of peers hold connections, and a
//! head dribbled a byte at a time is cut at a deadline counted from accept.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sonic_rs::JsonValueTrait;

/// Peers of each kind: more than the 16-connection cap.
const PEERS: usize = 20;

fn scrape(admin: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(admin).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// Writes one byte of a never-finished head to every socket every `every`, until `stop` (or
/// 30 rounds): peers that keep a per-read timeout from ever firing.
fn dribble(mut socks: Vec<TcpStream>, every: Duration, stop: Arc<AtomicBool>) {
    let head = b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for round in 0..30 {
        for s in &mut socks {
            let _ = s.write_all(&head[round % head.len()..][..1]);
        }
        // Dribbling one byte every `every` is the behaviour under test (checking `stop` often).
        let until = Instant::now() + every;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn scrapes_and_stats_succeed_while_slow_and_idle_peers_hold_connections() {
    let up = mock();
    let socket = scratch_file("stats.sock");
    let gw = gateway(config_for(
        &[up.base_url()],
        &format!(
            "stats_socket = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n",
            socket.display()
        ),
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<TcpStream> = (0..PEERS)
        .map(|_| TcpStream::connect(admin).expect("slow peer"))
        .collect();
    let dribbler = {
        let stop = stop.clone();
        std::thread::spawn(move || dribble(slow, Duration::from_secs(2), stop))
    };
    let _idle_admin: Vec<TcpStream> = (0..PEERS)
        .map(|_| TcpStream::connect(admin).expect("idle peer"))
        .collect();
    let _idle_stats: Vec<UnixStream> = (0..PEERS)
        .map(|_| UnixStream::connect(&socket).expect("idle stats peer"))
        .collect();

    for _ in 0..3 {
        let (status, text) = scrape(admin);
        assert_eq!(status, 200, "scrape refused: {text:?}");
        assert!(text.contains("shardgate_"), "{text}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["stats", "--json", "--socket"])
        .arg(&socket)
        .output()
        .expect("shardgate stats runs");
    assert!(
        out.status.success(),
        "shardgate stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: sonic_rs::Value = sonic_rs::from_slice(&out.stdout).expect("stats JSON");
    assert!(doc.get("shards").is_some());
    // A watcher on one connection keeps being answered.
    let mut watcher = UnixStream::connect(&socket).expect("watcher");
    watcher.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut lines = BufReader::new(watcher.try_clone().unwrap());
    for _ in 0..2 {
        watcher.write_all(b"stats\n").unwrap();
        let mut line = String::new();
        lines.read_line(&mut line).expect("stats line");
        assert!(line.starts_with('{'), "{line}");
    }
    // The gateway itself is untouched.
    let mut c = HttpConn::open(gw.addr());
    assert_eq!(
        c.post("/v1/responses", &post_body("gpt-5", "hi", false))
            .status,
        200
    );
    stop.store(true, Ordering::Relaxed);
    dribbler.join().unwrap();
}

#[test]
fn a_dribbled_admin_head_is_cut_at_its_deadline() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "admin_listen = \"127.0.0.1:0\"\n",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let peer = TcpStream::connect(admin).expect("connect");
    let accepted = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = {
        let (stop, peer) = (stop.clone(), peer.try_clone().unwrap());
        std::thread::spawn(move || dribble(vec![peer], Duration::from_millis(500), stop))
    };
    let mut reader = peer;
    reader
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = match reader.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let took = accepted.elapsed();
    stop.store(true, Ordering::Relaxed);
    dribbler.join().unwrap();
    assert!(closed, "a head dribbled a byte every 500 ms was never cut");
    assert!(took < Duration::from_secs(9), "cut after {took:?}");
}

#[test]
fn the_admin_listener_reads_heads_with_the_front_doors_strict_parser() {
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        "admin_listen = \"127.0.0.1:0\"\n",
    ));
    let admin = gw.admin_addr().expect("admin listener");
    let ask = |head: &str| {
        let mut s = TcpStream::connect(admin).expect("admin connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200"));
    // A bare LF line end (which httparse alone accepts) is refused, as the front door does.
    let out = ask("GET /metrics HTTP/1.1\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}
