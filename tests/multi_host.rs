//! Two gateway hosts (two `shardgate serve` processes) behind a real nginx that runs
//! examples/nginx-lb.conf (only its addresses replaced), sharing one Redis for sticky state and
//! the usage stream: reconnects with the same `session-id` land on the host that owns the
//! session (the hit rate is printed: README "Several hosts"), a client without a session-id
//! sticks by its key, a chain that reaches the other host gets DESIGN.md's "Beyond one host"
//! behaviour (same account; store=false: a clear `previous_response_not_found`, after which the
//! full context works there at once), and every completed turn of both hosts is in the Redis
//! stream exactly once.
//!
//! nginx comes from Debian (`scripts/test.sh` installs it); without it these tests are skipped,
//! except under `CI=true`, where a missing nginx fails them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use shardgate::mock::MockHandle;
use shardgate::state::{Keys, SessionKey};
use shardgate::tungstenite::Message;
use sonic_rs::JsonValueTrait;

/// The documented balancer config, run as it is.
const LB_CONF: &str = include_str!("../examples/nginx-lb.conf");
/// Client keys of the fleet: `sk-gw-mh-{i}`, id `key-{i}`.
const KEYS: usize = 4;
/// The two hosts' `[state] instance` names.
const HOSTS: [&str; 2] = ["host-a", "host-b"];

/// A name no other test run uses (Redis key prefix, stream, session ids).
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("sgtest-mh-{tag}-{}-{nanos}", std::process::id())
}

fn client_key(i: usize) -> String {
    format!("sk-gw-mh-{i}")
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Debian's nginx (in /usr/sbin, which a non-root PATH may lack).
fn nginx_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// `examples/nginx-lb.conf` with its listen address and its two hosts replaced by loopback ones,
/// and nothing else changed.
fn lb_conf(listen: u16, hosts: [SocketAddr; 2]) -> String {
    let mut text = LB_CONF.to_string();
    for (from, to) in [
        (
            "listen 80;".to_string(),
            format!("listen 127.0.0.1:{listen};"),
        ),
        (
            "server 10.0.0.11:8080;".to_string(),
            format!("server {};", hosts[0]),
        ),
        (
            "server 10.0.0.12:8080;".to_string(),
            format!("server {};", hosts[1]),
        ),
    ] {
        assert_eq!(
            text.matches(&from).count(),
            1,
            "examples/nginx-lb.conf has `{from}` once"
        );
        text = text.replace(&from, &to);
    }
    text
}

/// nginx running examples/nginx-lb.conf in the foreground, stopped (with its workers) on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in front of `hosts`; `None` (test skipped) when nginx is not installed,
    /// a failure under `CI=true`.
    fn start(hosts: [SocketAddr; 2]) -> Option<Self> {
        let Some(binary) = nginx_binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "nginx is missing (scripts/test.sh installs Debian's nginx)"
            );
            eprintln!("nginx not installed: multi-host test skipped");
            return None;
        };
        let port = free_port();
        let dir = scratch_file("nginx");
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
        }
        std::fs::write(dir.join("nginx-lb.conf"), lb_conf(port, hosts)).expect("lb conf");
        let d = dir.display();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    \
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
             uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
             include {d}/nginx-lb.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("nginx conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr")).expect("stderr file"),
            ))
            .spawn()
            .expect("nginx starts");
        let mut lb = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let up = poll_until(Duration::from_secs(20), || {
            lb.child.try_wait().ok().flatten().is_none() && TcpStream::connect(lb.addr).is_ok()
        });
        assert!(up, "nginx did not come up: {}", lb.log());
        Some(lb)
    }

    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr"), read("error.log"))
    }
}

impl Drop for Nginx {
    /// SIGTERM lets the master stop its workers (a killed master would leave them running).
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let stopped = poll_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One host's config: its own port and instance name, the fleet's Redis (state and usage
/// stream), the fleet's keys, one account per mock.
fn host_config(
    instance: &str,
    redis: &str,
    prefix: &str,
    stream: &str,
    mocks: &[MockHandle],
) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 2\ndrain_timeout_secs = 5\n\
         [state]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nkey_prefix = \"{prefix}\"\n\
         instance = \"{instance}\"\n\
         [usage]\nsink = \"redis\"\nredis_url = \"{redis}\"\nstream = \"{stream}\"\n\
         spool_dir = \"{}\"\n",
        scratch_file("spool").display()
    );
    for i in 0..KEYS {
        text.push_str(&format!(
            "[[client_keys]]\nkey = \"{}\"\nid = \"key-{i}\"\n",
            client_key(i)
        ));
    }
    for (i, m) in mocks.iter().enumerate() {
        text.push_str(&format!(
            "[[accounts]]\nid = \"acct-{i}\"\nbase_url = \"{}\"\napi_key = \"{ACCOUNT_KEY}\"\nmax_conns = 64\n",
            m.base_url()
        ));
    }
    text
}

/// What the Redis usage stream says about one response.
#[derive(Debug, Clone)]
struct Record {
    instance: String,
    account: String,
    key_id: String,
    status: String,
}

/// Two hosts over two accounts (one mock each, so a mock's counters say which account a turn
/// reached), nginx in front, one Redis.
struct Fleet {
    mocks: Vec<MockHandle>,
    hosts: Vec<Served>,
    lb: Nginx,
    redis: redis::Connection,
    prefix: String,
    stream: String,
}

impl Fleet {
    /// `None` when nginx is missing outside CI (the test is skipped).
    fn start(tag: &str) -> Option<Self> {
        let url = shared_redis_url();
        let redis = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(3)))
            .expect("Redis is reachable for tests (scripts/test.sh provides one)");
        let (prefix, stream) = (unique(tag), unique(&format!("{tag}-usage")));
        let mocks = vec![mock(), mock()];
        let hosts: Vec<Served> = HOSTS
            .iter()
            .map(|h| serve_binary(&host_config(h, &url, &prefix, &stream, &mocks)))
            .collect();
        let lb = Nginx::start([hosts[0].addr, hosts[1].addr])?;
        Some(Fleet {
            mocks,
            hosts,
            lb,
            redis,
            prefix,
            stream,
        })
    }

    /// The host named `instance`.
    fn host(&self, instance: &str) -> SocketAddr {
        let i = HOSTS.iter().position(|h| *h == instance).expect("a host");
        self.hosts[i].addr
    }

    /// The host that is not `instance`.
    fn other_host(&self, instance: &str) -> SocketAddr {
        let i = HOSTS.iter().position(|h| *h != instance).expect("a host");
        self.hosts[i].addr
    }

    /// The mock behind account `id`.
    fn account(&self, id: &str) -> &MockHandle {
        let i: usize = id
            .strip_prefix("acct-")
            .and_then(|n| n.parse().ok())
            .expect("an account id");
        &self.mocks[i]
    }

    /// Every record in the usage stream: (response id, record), in stream order.
    fn records(&mut self) -> Vec<(String, Record)> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .query(&mut self.redis)
            .expect("xrange");
        reply
            .ids
            .iter()
            .map(|e| {
                let id: String = e.get("response_id").expect("response_id field");
                let record: String = e.get("record").expect("record field");
                let v: sonic_rs::Value = sonic_rs::from_str(&record).expect("record is JSON");
                let field = |name: &str| v[name].as_str().unwrap_or_default().to_string();
                assert_eq!(field("response_id"), id);
                (
                    id,
                    Record {
                        instance: field("instance"),
                        account: field("account"),
                        key_id: field("key_id"),
                        status: field("status"),
                    },
                )
            })
            .collect()
    }

    /// The record of response `id`, once its host's control thread has written it.
    fn record_of(&mut self, id: &str) -> Record {
        let mut found = None;
        eventually(
            &format!("the usage record of {id} is in the stream"),
            Duration::from_secs(20),
            || {
                found = self
                    .records()
                    .into_iter()
                    .find(|(r, _)| r == id)
                    .map(|(_, rec)| rec);
                found.is_some()
            },
        );
        found.expect("found above")
    }

    /// Waits until another host can read the turn that answered `id` in `session` (client key
    /// `key-{key}`) from Redis. Its host's control thread sends the binding, the pending calls
    /// and, last, the session's last response in one pipeline on its next tick, apart from the
    /// usage record [`Fleet::record_of`] waits on: a reconnect before that reads no binding and
    /// goes to whichever account is least loaded.
    fn wait_in_redis(&mut self, id: &str, key: usize, session: &str) {
        let keys = Keys::new(&self.prefix);
        let binding = keys.response("default", id).expect("a response id");
        let last = keys.session(
            "default",
            &SessionKey::of_client(&format!("key-{key}"), session),
        );
        eventually(
            &format!("the turn of {id} is in Redis"),
            Duration::from_secs(20),
            || {
                let bound: bool = redis::cmd("EXISTS")
                    .arg(&binding)
                    .query(&mut self.redis)
                    .unwrap_or(false);
                let latest: Option<String> = redis::cmd("GET")
                    .arg(&last)
                    .query(&mut self.redis)
                    .unwrap_or(None);
                bound && latest.as_deref() == Some(id)
            },
        );
    }

    /// Stops both hosts (each flushes its usage records on the way out) and checks that the
    /// stream holds exactly the completed responses `completed`, each once.
    fn stop_and_check_usage(&mut self, completed: &BTreeSet<String>) -> BTreeMap<String, Record> {
        for h in &mut self.hosts {
            assert!(h.terminate().success(), "a host stopped cleanly");
        }
        let records = self.records();
        let ids: BTreeSet<String> = records.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids.len(), records.len(), "a response recorded twice");
        assert_eq!(&ids, completed, "the stream holds the completed turns");
        assert!(records.iter().all(|(_, r)| r.status == "completed"));
        records.into_iter().collect()
    }
}

impl Drop for Fleet {
    /// Takes the run's keys out of the shared Redis.
    fn drop(&mut self) {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut self.redis)
            .unwrap_or_default();
        let seen: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.stream))
            .query(&mut self.redis)
            .unwrap_or_default();
        keys.extend(seen);
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(keys).query(&mut self.redis);
        }
    }
}

/// Closes the client and waits until the gateway has answered the close, so its session has
/// ended and given its upstream connection back.
fn close(mut c: Client) {
    let _ = c.ws.close(None);
    let _ = c.ws.flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match c.ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

/// The response id of a turn that must have completed.
fn completed(t: &Turn) -> String {
    assert_eq!(t.last_type(), "response.completed", "{:?}", t.events);
    t.response_id().expect("a response id")
}

/// `POST /v1/responses` with `key` and no `session-id`, answered as JSON or, with `stream`, as
/// SSE (which the balancer must pass on unbuffered); the response id.
fn post_without_session(addr: SocketAddr, key: &str, stream: bool) -> String {
    let body = post_body("gpt-5", "no session", stream);
    let reply = HttpConn::open(addr).raw(
        format!(
            "POST /v1/responses HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = if stream {
        let events = reply.sse();
        let (event, data) = events.last().expect("SSE events");
        assert_eq!(event, "response.completed");
        data["response"]["id"].as_str().map(str::to_owned)
    } else {
        reply.json()["id"].as_str().map(str::to_owned)
    };
    id.expect("response id")
}

#[test]
fn reconnects_through_the_balancer_land_on_the_host_that_owns_the_session() {
    const SESSIONS: usize = 40;
    const POSTS_PER_KEY: usize = 3;
    let Some(mut fleet) = Fleet::start("reconnect") else {
        return;
    };
    let lb = fleet.lb.addr;
    let tag = unique("conv");
    // Each session: a store=false turn, a disconnect, a reconnect with the same session-id
    // chained to it. The chain completes only on the upstream connection that produced its
    // previous response, which only the owner host has.
    let mut pairs = Vec::new();
    let mut done = BTreeSet::new();
    for i in 0..SESSIONS {
        let session = format!("{tag}-{i}");
        let key = client_key(i % KEYS);
        let mut c = connect_session(lb, &key, Some(&session));
        let first = completed(&c.turn(&create("gpt-5", "first", false, None)));
        close(c);
        let mut again = connect_session(lb, &key, Some(&session));
        let second = again.turn(&create("gpt-5", "again", false, Some(&first)));
        close(again);
        done.insert(first.clone());
        let second = (second.last_type() == "response.completed")
            .then(|| second.response_id())
            .flatten();
        if let Some(id) = &second {
            done.insert(id.clone());
        }
        pairs.push((first, second));
    }
    // Clients without a session-id stick by their key.
    let mut posts: Vec<(usize, String)> = Vec::new();
    for k in 0..KEYS {
        for n in 0..POSTS_PER_KEY {
            let id = post_without_session(lb, &client_key(k), n % 2 == 1);
            done.insert(id.clone());
            posts.push((k, id));
        }
    }
    let records = fleet.stop_and_check_usage(&done);

    let host_of = |id: &str| records[id].instance.clone();
    let hits = pairs
        .iter()
        .filter(|(first, second)| {
            second
                .as_deref()
                .is_some_and(|s| host_of(s) == host_of(first))
        })
        .count();
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for (first, _) in &pairs {
        *per_host.entry(host_of(first)).or_default() += 1;
    }
    eprintln!(
        "multi-host reconnect hit rate: {hits}/{SESSIONS} reconnects on the owner host with their \
         store=false chain intact; sessions per host {per_host:?}"
    );
    assert_eq!(hits, SESSIONS, "every reconnect lands on its owner");
    assert_eq!(
        per_host.len(),
        2,
        "sessions spread over both hosts: {per_host:?}"
    );
    for k in 0..KEYS {
        let hosts: BTreeSet<String> = posts
            .iter()
            .filter(|(key, _)| *key == k)
            .map(|(_, id)| {
                assert_eq!(records[id].key_id, format!("key-{k}"));
                host_of(id)
            })
            .collect();
        assert_eq!(
            hosts.len(),
            1,
            "key-{k} without session-id sticks to one host: {hosts:?}"
        );
    }
}

#[test]
fn a_chain_that_reaches_the_other_host_gets_the_same_account_and_never_a_wrong_answer() {
    const SESSIONS: usize = 6;
    let Some(mut fleet) = Fleet::start("other-host") else {
        return;
    };
    let lb = fleet.lb.addr;
    let tag = unique("conv");
    let key = client_key(0);
    let mut done = BTreeSet::new();
    let mut accounts = BTreeSet::new();
    for i in 0..SESSIONS {
        let session = format!("{tag}-{i}");
        let mut c = connect_session(lb, &key, Some(&session));
        // The stored turn first: a connection keeps only its latest store=false response.
        let stored = completed(&c.turn(&create("gpt-5", "stored", true, None)));
        let first = completed(&c.turn(&create("gpt-5", "first", false, None)));
        close(c);
        done.extend([first.clone(), stored.clone()]);
        let owner = fleet.record_of(&first);
        let stored_owner = fleet.record_of(&stored);
        fleet.wait_in_redis(&first, 0, &session);
        accounts.insert(owner.account.clone());
        let before: Vec<_> = fleet.mocks.iter().map(|m| m.stats()).collect();

        // The client's reconnect reaches the other host (forced: straight to its port).
        let mut moved = connect_session(fleet.other_host(&owner.instance), &key, Some(&session));
        let lost = moved.turn(&create("gpt-5", "go on", false, Some(&first)));
        assert_eq!(
            lost.error_code().as_deref(),
            Some("previous_response_not_found"),
            "a store=false chain off its host is refused, never answered without its context: {:?}",
            lost.events
        );
        assert_eq!(
            lost.events
                .last()
                .and_then(|e| e["error"]["param"].as_str().map(str::to_owned)),
            Some("previous_response_id".to_string())
        );
        let account = fleet.account(&owner.account);
        let index = fleet
            .mocks
            .iter()
            .position(|m| std::ptr::eq(m, account))
            .expect("mock");
        assert_eq!(
            account.stats().previous_response_not_found_total,
            before[index].previous_response_not_found_total + 1,
            "the chain went to the account its response lives on"
        );
        for (j, m) in fleet.mocks.iter().enumerate() {
            if j != index {
                assert_eq!(
                    m.stats().ws_turns_total,
                    before[j].ws_turns_total,
                    "other account untouched"
                );
            }
        }
        // The full context, resent there, works at once.
        let resent = completed(&moved.turn(&create("gpt-5", "everything again", false, None)));
        close(moved);
        // A stored chain works on the other host, on the same account.
        let mut moved = connect_session(fleet.other_host(&owner.instance), &key, Some(&session));
        let chained = completed(&moved.turn(&create("gpt-5", "stored chain", true, Some(&stored))));
        close(moved);
        let chained_record = fleet.record_of(&chained);
        assert_ne!(chained_record.instance, stored_owner.instance);
        assert_eq!(chained_record.account, stored_owner.account, "same account");
        done.extend([resent, chained]);

        // Back on the owner host, the store=false chain is intact.
        let mut home = connect_session(fleet.host(&owner.instance), &key, Some(&session));
        let kept = completed(&home.turn(&create("gpt-5", "home", false, Some(&first))));
        close(home);
        done.insert(kept);
    }
    eprintln!("store=false chains reached the other host on accounts {accounts:?}");
    fleet.stop_and_check_usage(&done);
}

/// A `response.create` (store=false) answering `call` with its output, chained to `previous`
/// when given (Codex sends the id; a client that does not gets its session's last response).
fn tool_output(call: &str, previous: Option<&str>) -> String {
    let prev = previous
        .map(|p| format!(",\"previous_response_id\":\"{p}\""))
        .unwrap_or_default();
    format!(
        r#"{{"type":"response.create","model":"gpt-5","store":false{prev},"input":[{{"type":"function_call_output","call_id":"{call}","output":"ok"}}]}}"#
    )
}

/// The `call_id` of the function call a turn's response ended with.
fn call_id_of(turn: &Turn) -> String {
    use sonic_rs::JsonContainerTrait;
    let last = turn.events.last().expect("a terminal event");
    let items = last["response"]["output"].as_array().expect("output items");
    items
        .iter()
        .find_map(|i| {
            (i["type"].as_str() == Some("function_call"))
                .then(|| i["call_id"].as_str().map(str::to_owned))
                .flatten()
        })
        .expect("a function call")
}

#[test]
fn a_tool_output_that_reaches_the_other_host_is_refused_on_the_same_account() {
    const SESSIONS: usize = 8;
    let Some(mut fleet) = Fleet::start("tool-output") else {
        return;
    };
    let lb = fleet.lb.addr;
    let tag = unique("conv");
    let key = client_key(1);
    let mut done = BTreeSet::new();
    for i in 0..SESSIONS {
        let session = format!("{tag}-{i}");
        let mut c = connect_session(lb, &key, Some(&session));
        let asked = c.turn(&create("gpt-5", "run it [[mock:tool=shell]]", false, None));
        let call = call_id_of(&asked);
        let asked = completed(&asked);
        close(c);
        done.insert(asked.clone());
        let owner = fleet.record_of(&asked);
        fleet.wait_in_redis(&asked, 1, &session);
        let refused_before = fleet
            .account(&owner.account)
            .stats()
            .previous_response_not_found_total;

        // The tool's output reaches the other host, with the id and without it (the host
        // knows the session's last response and its pending call from Redis): both refused on
        // the same account, neither answered without the call's context.
        for previous in [Some(asked.as_str()), None] {
            let mut moved =
                connect_session(fleet.other_host(&owner.instance), &key, Some(&session));
            let t = moved.turn(&tool_output(&call, previous));
            close(moved);
            assert_eq!(
                t.error_code().as_deref(),
                Some("previous_response_not_found"),
                "{:?}",
                t.events
            );
        }
        assert_eq!(
            fleet
                .account(&owner.account)
                .stats()
                .previous_response_not_found_total,
            refused_before + 2,
            "both went to the account the call lives on"
        );

        // The owner host takes the output on the call's connection.
        let mut home = connect_session(fleet.host(&owner.instance), &key, Some(&session));
        let answered = completed(&home.turn(&tool_output(&call, Some(&asked))));
        close(home);
        done.insert(answered);
    }
    fleet.stop_and_check_usage(&done);
}
