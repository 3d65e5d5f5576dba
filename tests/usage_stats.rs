//! Usage records are never lost or doubled (file sink, Redis stream sink, a Redis outage, a
//! SIGTERM mid-turn), and the gateway's measurements can be read from outside (stats socket,
//! `shardgate stats`, HdrHistogram logs, Prometheus `/metrics`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::private_redis::PrivateRedis;
use common::*;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use shardgate::stats::client::StatsClient;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// What the client saw of one completed turn.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    id: String,
    input: u64,
    output: u64,
    total: u64,
}

/// `turns` completed turns on one session, each with a different output size.
fn run_turns(addr: SocketAddr, turns: usize, tag: &str) -> Vec<Seen> {
    let mut client = connect(addr);
    (0..turns)
        .map(|i| {
            let input = format!("{tag} turn {i} [[mock:deltas={}]]", 1 + i % 5);
            let turn = client.turn(&create("gpt-5", &input, true, None));
            assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
            Seen {
                id: turn.response_id().expect("response id"),
                input: turn.usage_field("input_tokens").expect("input tokens"),
                output: turn.usage_field("output_tokens").expect("output tokens"),
                total: turn.usage_field("total_tokens").expect("total tokens"),
            }
        })
        .collect()
}

/// A record as written by a sink, reduced to what the client can check.
fn seen_of(record: &str) -> Seen {
    let v: sonic_rs::Value = sonic_rs::from_str(record).expect("record is JSON");
    assert_eq!(v["key_id"].as_str(), Some("test-key"), "{record}");
    assert_eq!(v["request_type"].as_str(), Some("ws"), "{record}");
    assert_eq!(v["status"].as_str(), Some("completed"), "{record}");
    assert!(
        !record.contains(CLIENT_KEY) && !record.contains(ACCOUNT_KEY),
        "a key leaked into a usage record"
    );
    Seen {
        id: v["response_id"].as_str().expect("response_id").to_string(),
        input: v["input_tokens"].as_u64().expect("input_tokens"),
        output: v["output_tokens"].as_u64().expect("output_tokens"),
        total: v["total_tokens"].as_u64().expect("total_tokens"),
    }
}

/// Every record of a JSONL sink, rotated files first (oldest to newest), then the live file.
fn file_records(path: &Path) -> (Vec<Seen>, usize) {
    let mut files = vec![];
    let mut n = 1;
    loop {
        let rotated = PathBuf::from(format!("{}.{n}", path.display()));
        if !rotated.exists() {
            break;
        }
        files.push(rotated);
        n += 1;
    }
    let rotated = files.len();
    files.push(path.to_path_buf());
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        out.extend(text.lines().map(seen_of));
    }
    (out, rotated)
}

/// Exactly the turns the clients saw: same ids, no repeats, same token counts.
fn assert_exactly(records: &[Seen], seen: &[Seen]) {
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        records.len(),
        "duplicate response ids in the sink"
    );
    let mut a = records.to_vec();
    let mut b = seen.to_vec();
    a.sort();
    b.sort();
    assert_eq!(a.len(), b.len(), "records vs turns");
    assert_eq!(a, b);
    let sum = |v: &[Seen]| {
        v.iter().fold((0, 0, 0), |s, r| {
            (s.0 + r.input, s.1 + r.output, s.2 + r.total)
        })
    };
    assert_eq!(sum(records), sum(seen));
}

fn unique(name: &str) -> String {
    format!(
        "sg-test:{name}:{}:{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn file_sink_has_exactly_one_record_per_turn_across_rotations() {
    let up = mock();
    let usage = scratch_file("usage.jsonl");
    let spool = scratch_file("spool");
    let gw = gateway(config_for(
        &[up.base_url()],
        &format!(
            "[usage]\npath = \"{}\"\nrotate_bytes = 4096\nspool_dir = \"{}\"\n",
            usage.display(),
            spool.display()
        ),
    ));
    let addr = gw.addr();
    let handles: Vec<_> = (0..3)
        .map(|c| std::thread::spawn(move || run_turns(addr, 15, &format!("client {c}"))))
        .collect();
    let seen: Vec<Seen> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    gw.stop();
    let (records, rotated) = file_records(&usage);
    assert!(
        rotated >= 2,
        "45 records over 4 KiB files rotate ({rotated})"
    );
    assert_exactly(&records, &seen);
    assert!(!spool.exists(), "a healthy sink never touches the spool");
    up.stop();
}

fn redis_records(url: &str, stream: &str) -> Vec<Seen> {
    use redis::Commands;
    let client = redis::Client::open(url).expect("redis url");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("redis answers");
    let reply: redis::streams::StreamRangeReply = con.xrange_all(stream).expect("xrange");
    reply
        .ids
        .iter()
        .map(|e| {
            let id: String = e.get("response_id").expect("response_id field");
            let record: String = e.get("record").expect("record field");
            let s = seen_of(&record);
            assert_eq!(s.id, id);
            s
        })
        .collect()
}

fn redis_cleanup(url: &str, stream: &str, ids: &[Seen]) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(2)) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(stream);
        for s in ids {
            cmd.arg(format!("{stream}:seen:{}", s.id));
        }
        let _: redis::RedisResult<u64> = cmd.query(&mut con);
    }
}

#[test]
fn redis_stream_sink_has_exactly_one_record_per_turn() {
    let url = &shared_redis_url();
    let stream = unique("usage");
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        &format!(
            "[usage]\nsink = \"redis\"\nredis_url = \"{url}\"\nstream = \"{stream}\"\nspool_dir = \"{}\"\n",
            scratch_file("spool").display()
        ),
    ));
    let addr = gw.addr();
    let handles: Vec<_> = (0..2)
        .map(|c| std::thread::spawn(move || run_turns(addr, 12, &format!("client {c}"))))
        .collect();
    let seen: Vec<Seen> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    gw.stop();
    let records = redis_records(url, &stream);
    redis_cleanup(url, &stream, &records);
    assert_exactly(&records, &seen);
    up.stop();
}

fn stats_doc(socket: &Path) -> sonic_rs::Value {
    let mut c = StatsClient::connect(socket).expect("stats socket");
    sonic_rs::from_str(&c.stats_json().expect("stats")).expect("stats is JSON")
}

#[test]
fn redis_outage_spools_and_replays_without_loss_or_duplicates() {
    let dir = scratch_file("redis");
    std::fs::create_dir_all(&dir).unwrap();
    // An append-only file, so a kill and restart keeps what the server took.
    let dir_arg = dir.display().to_string();
    let mut redis = PrivateRedis::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ]);
    let url = redis.url();
    let stream = unique("outage");
    let socket = scratch_file("stats.sock");
    let spool = scratch_file("spool");
    let up = mock();
    let gw = gateway(config_for(
        &[up.base_url()],
        &format!(
            "stats_socket = \"{}\"\n[usage]\nsink = \"redis\"\nredis_url = \"{url}\"\nstream = \"{stream}\"\nspool_dir = \"{}\"\n[state]\nredis_timeout_ms = 500\n",
            socket.display(),
            spool.display()
        ),
    ));
    let mut seen = run_turns(gw.addr(), 10, "before");
    // Let those reach Redis, then take Redis away while turns go on.
    eventually("records reached redis", Duration::from_secs(20), || {
        redis_records(&url, &stream).len() >= 10
    });
    redis.kill();
    seen.extend(run_turns(gw.addr(), 15, "during"));
    eventually("records were spooled", Duration::from_secs(20), || {
        stats_doc(&socket)["control"]["counters"]["usage_spooled"].as_u64() >= Some(15)
    });
    redis.restart();
    seen.extend(run_turns(gw.addr(), 5, "after"));
    eventually("the spool was replayed", Duration::from_secs(30), || {
        redis_records(&url, &stream).len() >= seen.len()
    });
    let control = stats_doc(&socket)["control"]["counters"].clone();
    gw.stop();
    let records = redis_records(&url, &stream);
    assert_exactly(&records, &seen);
    assert_eq!(control["usage_dropped"].as_u64(), Some(0), "{control:?}");
    assert!(
        control["usage_replayed"].as_u64() >= Some(15),
        "{control:?}"
    );
    let left = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "replayed spool segments are removed");
    up.stop();
}

/// One turn, or `None` when the connection failed before its terminal event.
fn try_turn(client: &mut Client, frame: &str) -> Option<Turn> {
    use shardgate::tungstenite::Message;
    client.ws.send(Message::text(frame)).ok()?;
    let mut turn = Turn::default();
    loop {
        let Message::Text(text) = client.ws.read().ok()? else {
            continue;
        };
        let v: sonic_rs::Value = sonic_rs::from_str(text.as_str()).expect("event is JSON");
        let t = event_type(&v);
        turn.events.push(v);
        let terminal = [
            "response.completed",
            "response.failed",
            "response.incomplete",
            "error",
        ];
        if terminal.contains(&t.as_str()) {
            return Some(turn);
        }
    }
}

#[test]
fn sigterm_drains_in_flight_turns_and_records_every_completed_one() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let up = mock();
    let usage = scratch_file("usage.jsonl");
    let mut served = serve_binary(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 20\n\
         [[client_keys]]\nkey = \"{CLIENT_KEY}\"\nid = \"test-key\"\n\
         [[accounts]]\nid = \"acct-0\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 8\n\
         [usage]\npath = \"{}\"\nspool_dir = \"{}\"\n",
        up.base_url(),
        usage.display(),
        scratch_file("spool").display()
    ));
    let addr = served.addr;
    let signalled = Arc::new(AtomicBool::new(false));
    let turns_done = Arc::new(AtomicUsize::new(0));
    // Each client runs slow turns (~0.6 s) back to back and starts no new one after SIGTERM.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let signalled = signalled.clone();
            let turns_done = turns_done.clone();
            std::thread::spawn(move || {
                let mut client = connect(addr);
                let mut done = vec![];
                let mut after_signal = 0;
                for i in 0.. {
                    if signalled.load(Ordering::SeqCst) {
                        break;
                    }
                    let input = format!("c{c} t{i} [[mock:ttft_ms=300,deltas=4,delay_ms=75]]");
                    let frame = create("gpt-5", &input, true, None);
                    let Some(turn) = try_turn(&mut client, &frame) else {
                        // Only a turn that raced the signal (sent as the shard finished
                        // draining) may fail; the gateway never started it.
                        assert!(
                            signalled.load(Ordering::SeqCst),
                            "turn {i} failed before SIGTERM"
                        );
                        break;
                    };
                    assert_eq!(turn.last_type(), "response.completed", "{:?}", turn.types());
                    if signalled.load(Ordering::SeqCst) {
                        after_signal += 1;
                    }
                    done.push(turn.response_id().expect("response id"));
                    turns_done.fetch_add(1, Ordering::SeqCst);
                }
                (done, after_signal)
            })
        })
        .collect();
    // Every client has finished a turn and started its next: turns are in flight.
    eventually(
        "every client finished a turn",
        Duration::from_secs(30),
        || turns_done.load(Ordering::SeqCst) >= 4,
    );
    signalled.store(true, Ordering::SeqCst);
    served.signal(libc::SIGTERM);
    let mut completed = vec![];
    let mut finished_after_signal = 0;
    for c in clients {
        let (done, after) = c.join().expect("client thread");
        completed.extend(done);
        finished_after_signal += after;
    }
    let mut status = None;
    eventually(
        "the gateway exited after SIGTERM",
        Duration::from_secs(30),
        || {
            status = served.child.try_wait().expect("wait");
            status.is_some()
        },
    );
    let status = status.expect("exited above");
    assert!(status.success(), "{status:?}");
    assert!(
        finished_after_signal > 0,
        "no turn was in flight at SIGTERM, so the drain was not exercised"
    );
    let (records, _) = file_records(&usage);
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "duplicate records");
    for id in &completed {
        assert!(
            ids.contains(id.as_str()),
            "completed turn {id} has no usage record"
        );
    }
    assert_eq!(records.len(), completed.len());
    up.stop();
}

/// A strict reader of the Prometheus text format (0.0.4): every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are well-formed, values are floats.
/// Returns samples as `name{labels}` → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next(), parts.next(), parts.next());
            let name = name.expect("metadata names a metric");
            assert!(valid_name(name), "bad metric name in {line:?}");
            match kind {
                Some("TYPE") => {
                    let t = arg.expect("TYPE has a type");
                    assert!(
                        ["counter", "gauge", "summary", "histogram", "untyped"].contains(&t),
                        "{line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE twice: {name}"
                    );
                }
                Some("HELP") => {}
                _ => panic!("unknown metadata line {line:?}"),
            }
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels close");
                let mut rest = labels;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(valid_name(key), "bad label name in {line:?}");
                    let mut end = None;
                    let mut escaped = false;
                    for (i, c) in after.char_indices() {
                        match (escaped, c) {
                            (true, '\\' | '"' | 'n') => escaped = false,
                            (true, _) => panic!("bad escape in {line:?}"),
                            (false, '\\') => escaped = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            (false, _) => {}
                        }
                    }
                    let end = end.expect("label value closes");
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                name
            }
            None => series,
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let family = [("_sum", "summary"), ("_count", "summary")]
            .iter()
            .find_map(|(suffix, t)| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).map(String::as_str) == Some(*t))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its TYPE: {line:?}"
        );
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "repeated series {series}"
        );
    }
    samples
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("admin reply");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body_of(&out).to_string())
}

fn decode_log(log: &str) -> Vec<Histogram<u64>> {
    IntervalLogIterator::new(log.as_bytes())
        .filter_map(|e| match e.expect("log entry parses") {
            LogEntry::Interval(i) => Some(i),
            _ => None,
        })
        .map(|i| {
            let bytes = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                i.encoded_histogram(),
            )
            .expect("base64");
            Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .expect("V2 histogram decodes")
        })
        .collect()
}

#[test]
fn stats_socket_cli_hist_logs_and_metrics_after_load() {
    let up = mock();
    let socket = scratch_file("stats.sock");
    // A stale socket file from a gateway that died is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let gw = gateway(config_for(
        &[up.base_url()],
        &format!(
            "stats_socket = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\nstats_interval_ms = 100\n",
            socket.display()
        ),
    ));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "stats socket mode is {mode:o}");
    let turns = 12;
    run_turns(gw.addr(), turns, "stats");

    // The shards count a turn when it ends; the control thread counts its usage record once
    // written, a little later: wait for both.
    let shows_turns = |doc: &sonic_rs::Value| {
        doc["total"]["merged"]["counters"]["turns_completed"].as_u64() == Some(turns as u64)
            && doc["control"]["counters"]["usage_written"].as_u64() == Some(turns as u64)
    };
    if !poll_until(Duration::from_secs(20), || shows_turns(&stats_doc(&socket))) {
        panic!("stats never showed the turns: {:?}", stats_doc(&socket));
    }
    let doc = stats_doc(&socket);
    for scope in ["total", "window"] {
        let ttft = &doc[scope]["merged"]["hists"]["client_ttft"];
        assert_eq!(
            ttft["count"].as_u64(),
            Some(turns as u64),
            "{scope}: {ttft:?}"
        );
        assert!(
            ttft["p50"].as_u64() > Some(0) && ttft["max"].as_u64() >= ttft["p99"].as_u64(),
            "{ttft:?}"
        );
        assert_eq!(doc[scope]["per_shard"].as_array().map(|a| a.len()), Some(2));
    }
    assert!(doc["total"]["merged"]["hists"]["event_added_ws"]["count"].as_u64() > Some(0));
    let control = &doc["control"];
    assert_eq!(
        control["counters"]["usage_written"].as_u64(),
        Some(turns as u64)
    );
    assert_eq!(
        control["labeled"]["usage_by_type"]["ws"].as_u64(),
        Some(turns as u64)
    );
    assert_eq!(
        control["labeled"]["usage_by_status"]["completed"].as_u64(),
        Some(turns as u64)
    );
    assert_eq!(control["derived"]["attempts_per_turn"].as_f64(), Some(1.0));

    // The CLI, as an operator runs it: a table, and the raw document.
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["stats", "--socket"])
        .arg(&socket)
        .output()
        .expect("stats cli runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let ttft_row = table
        .lines()
        .find(|l| l.starts_with("client_ttft"))
        .unwrap_or_else(|| panic!("no client_ttft row in\n{table}"));
    assert_eq!(ttft_row.split_whitespace().nth(2), Some("12"), "{ttft_row}");
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["stats", "--json", "--socket"])
        .arg(&socket)
        .output()
        .expect("stats cli runs");
    let json: sonic_rs::Value = sonic_rs::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json["shards"].as_u64(), Some(2));
    // --watch redraws every second until stopped.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["stats", "--watch", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("stats --watch runs");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut frames = 0;
    while frames < 2 {
        let line = lines.next().expect("watch keeps printing").expect("utf-8");
        frames += usize::from(line.contains("shardgate: up"));
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // HdrHistogram logs decode with the hdrhistogram crate, from the CLI and from the socket.
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["stats", "--hist", "turn_duration", "--total", "--socket"])
        .arg(&socket)
        .output()
        .expect("stats cli runs");
    assert!(out.status.success());
    let from_cli = decode_log(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(from_cli.len(), 1);
    assert_eq!(from_cli[0].len(), turns as u64);
    let mut client = StatsClient::connect(&socket).unwrap();
    let window = decode_log(&client.hist("client_ttft", false).unwrap());
    assert_eq!(window.iter().map(Histogram::len).sum::<u64>(), turns as u64);
    let total = decode_log(&client.hist("client_ttft", true).unwrap());
    assert_eq!(total.len(), 1);
    assert_eq!(total[0].len(), turns as u64);
    assert!(client.hist("no_such_hist", false).is_err());
    assert!(client.request("frobnicate").unwrap().starts_with("error:"));
    assert_eq!(client.request("reset-window").unwrap(), "ok");
    let doc = stats_doc(&socket);
    assert_eq!(
        doc["window"]["merged"]["hists"]["client_ttft"]["count"].as_u64(),
        Some(0)
    );
    assert_eq!(
        doc["total"]["merged"]["hists"]["client_ttft"]["count"].as_u64(),
        Some(turns as u64)
    );

    // Prometheus text.
    let admin = gw.admin_addr().expect("admin listener");
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    let samples = parse_prometheus(&body);
    let turns_total: f64 = (0..2)
        .filter_map(|s| samples.get(&format!("shardgate_turns_completed_total{{shard=\"{s}\"}}")))
        .sum();
    assert_eq!(turns_total, turns as f64);
    assert_eq!(samples["shardgate_client_ttft_seconds_count"], turns as f64);
    assert!(samples["shardgate_client_ttft_seconds_sum"] > 0.0);
    assert!(samples.contains_key("shardgate_client_ttft_seconds{quantile=\"0.99\"}"));
    assert!(!body.contains(CLIENT_KEY) && !body.contains(ACCOUNT_KEY));
    assert_eq!(http_get(admin, "/other").0, 404);

    // A second gateway on the same socket refuses to start instead of stealing it.
    let err = shardgate::gateway::Gateway::start(config_for(
        &[up.base_url()],
        &format!("stats_socket = \"{}\"\n", socket.display()),
    ))
    .err()
    .expect("second gateway refused");
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(
        UnixStream::connect(&socket).is_ok(),
        "the live socket was left alone"
    );

    gw.stop();
    assert!(!socket.exists(), "socket removed at stop");
    up.stop();
}

#[test]
fn redis_sink_writes_a_replayed_record_once() {
    use shardgate::usage::redis_stream::RedisStreamSink;
    use shardgate::usage::sink::{Batch, Sink};
    let url = &shared_redis_url();
    let stream = unique("dedup");
    let batch = |ids: &[u64]| {
        let mut batch = Batch::default();
        for i in ids {
            batch.push(
                &format!("resp_dedup_{i}"),
                &format!(
                    r#"{{"response_id":"resp_dedup_{i}","key_id":"test-key","request_type":"ws","status":"completed","input_tokens":{i},"output_tokens":1,"total_tokens":{}}}"#,
                    i + 1
                ),
            );
        }
        batch
    };
    let mut sink = RedisStreamSink::new(
        &shardgate::config::Secret::new(url.into()),
        &stream,
        Duration::from_secs(2),
    )
    .expect("sink");
    sink.write(&batch(&[1, 2])).expect("first batch");
    sink.write(&batch(&[2, 3, 1])).expect("replayed batch");
    let records = redis_records(url, &stream);
    redis_cleanup(url, &stream, &records);
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["resp_dedup_1", "resp_dedup_2", "resp_dedup_3"]);
    assert_eq!(sink.duplicates, 2);
}
