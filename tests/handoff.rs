//! Cross-shard handoff: a connection accepted on one shard, with bytes already read, is resumed
//! on another shard, which reads the prefix and the rest and answers on the same socket; when
//! the owner's channel is full the connection comes back and is served where it was accepted.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardgate::net::ClientStream;
use shardgate::runtime::{self, BoundListener};
use shardgate::shard::handoff::{self, HandedConn, HandoffError};

/// What shard A tells shard B about the connection.
struct Meta {
    from_shard: usize,
}

#[test]
fn connection_with_read_bytes_is_resumed_on_the_other_shard() {
    let listener = BoundListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ports = handoff::mesh::<Meta>(2, 4).into_iter();
    let (port_a, port_b) = (ports.next().unwrap(), ports.next().unwrap());

    let a = runtime::spawn_executor("shard-a", None, move || async move {
        let (handoff, _inbox) = port_a.connect().await;
        let listener = runtime::adopt_listener(listener);
        let mut stream = runtime::accept(&listener).await.expect("accept");
        let mut head = vec![0u8; 6];
        stream.read_exact(&mut head).await.expect("read head");
        let Ok(conn) = HandedConn::new(ClientStream::Plain(stream), head, Meta { from_shard: 0 })
        else {
            panic!("detach failed");
        };
        match handoff.send(0, conn) {
            Err((HandoffError::NoSuchShard, conn)) => handoff.send(1, conn),
            other => other,
        }
        .map_err(|(e, _)| e)
    })
    .unwrap();

    let b = runtime::spawn_executor("shard-b", None, move || async move {
        let (_handoff, inbox) = port_b.connect().await;
        let (done_tx, done_rx) = futures_channel::oneshot::channel::<()>();
        let done_tx = Rc::new(RefCell::new(Some(done_tx)));
        let on_conn = move |conn: HandedConn<Meta>| {
            let done_tx = done_tx.clone();
            runtime::spawn_local(async move {
                let (mut stream, meta) = conn.resume();
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read(&mut byte).await.expect("read") == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                let thread = std::thread::current().name().unwrap_or("?").to_string();
                let answer = format!(
                    "{thread} read {} (from shard {})\n",
                    String::from_utf8_lossy(&line),
                    meta.from_shard
                );
                stream.write_all(answer.as_bytes()).await.expect("write");
                stream.flush().await.expect("flush");
                if let Some(tx) = done_tx.borrow_mut().take() {
                    let _ = tx.send(());
                }
            });
        };
        // The inbox ends when shard A is gone; the resumed connection is served to its end.
        let ((), served) = futures_util::future::join(inbox.run(on_conn), done_rx).await;
        served.is_ok()
    })
    .unwrap();

    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"part1|part2\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&client).read_line(&mut answer).unwrap();
    assert_eq!(answer, "shard-b read part1|part2 (from shard 0)\n");
    assert_eq!(a.join().unwrap(), Ok(()));
    assert!(b.join().unwrap(), "shard B served the connection");
}

/// Reads one line (prefix first) and answers with the thread that served it.
async fn answer_line(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).await.expect("read") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let thread = std::thread::current().name().unwrap_or("?").to_string();
    let answer = format!("{thread} read {}\n", String::from_utf8_lossy(&line));
    stream.write_all(answer.as_bytes()).await.expect("write");
    stream.flush().await.expect("flush");
}

fn client(addr: SocketAddr, line: &[u8]) -> std::net::TcpStream {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    c.write_all(line).unwrap();
    c
}

fn read_answer(c: &std::net::TcpStream) -> String {
    let mut answer = String::new();
    BufReader::new(c).read_line(&mut answer).unwrap();
    answer
}

#[test]
fn a_full_owner_channel_gives_the_connection_back_to_serve_locally() {
    let listener = BoundListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ports = handoff::mesh::<()>(2, 1).into_iter();
    let (port_a, port_b) = (ports.next().unwrap(), ports.next().unwrap());
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();

    let a = runtime::spawn_executor("shard-a", None, move || async move {
        let (handoff, _inbox) = port_a.connect().await;
        let listener = runtime::adopt_listener(listener);
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let mut stream = runtime::accept(&listener).await.expect("accept");
            let mut head = vec![0u8; 2];
            stream.read_exact(&mut head).await.expect("read head");
            let Ok(conn) = HandedConn::new(ClientStream::Plain(stream), head, ()) else {
                panic!("detach failed");
            };
            match handoff.send(1, conn) {
                Ok(()) => outcomes.push(None),
                Err((e, conn)) => {
                    outcomes.push(Some(e));
                    answer_line(conn.resume().0).await;
                }
            }
        }
        outcomes
    })
    .unwrap();

    let b = runtime::spawn_executor("shard-b", None, move || async move {
        let (_handoff, inbox) = port_b.connect().await;
        // Shard B is busy: it takes nothing from its inbox until told to.
        let _ = runtime::blocking(move || go_rx.recv()).await;
        let (done_tx, done_rx) = futures_channel::oneshot::channel::<()>();
        let done_tx = Rc::new(RefCell::new(Some(done_tx)));
        let on_conn = move |conn: HandedConn<()>| {
            let done_tx = done_tx.clone();
            runtime::spawn_local(async move {
                answer_line(conn.resume().0).await;
                if let Some(tx) = done_tx.borrow_mut().take() {
                    let _ = tx.send(());
                }
            });
        };
        let ((), served) = futures_util::future::join(inbox.run(on_conn), done_rx).await;
        served.is_ok()
    })
    .unwrap();

    // The listen queue is FIFO: shard A accepts (and hands off) the first connection first.
    let first = client(addr, b"c1-x\n");
    let second = client(addr, b"c2-y\n");
    assert_eq!(read_answer(&second), "shard-a read c2-y\n");
    assert_eq!(a.join().unwrap(), vec![None, Some(HandoffError::Full)]);
    go_tx.send(()).unwrap();
    assert_eq!(read_answer(&first), "shard-b read c1-x\n");
    assert!(b.join().unwrap());
}
