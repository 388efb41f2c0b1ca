//! The server's connection bounds (serve.rs) over real sockets: a partial header, a silent
//! client and an idle keep-alive connection are closed after their timeouts; a slow request
//! keeps its connection; shutdown lets a request in flight finish.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use quota_sidecar::serve::{serve, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEADER_MS: u64 = 400;
const IDLE_MS: u64 = 900;

fn app() -> Router {
    Router::new().route("/ok", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(IDLE_MS * 2)).await;
            "slow"
        }),
    )
}

/// Serves `app()` until the returned sender is used.
async fn start() -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig {
        header_read_timeout: Duration::from_millis(HEADER_MS),
        idle_timeout: Duration::from_millis(IDLE_MS),
        shutdown_grace: Duration::from_secs(5),
    };
    let task = tokio::spawn(serve(listener, app(), config, async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, task)
}

/// Reads until the peer closes; returns what was read and when it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Instant) {
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&all).into(), Instant::now())
            }
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after 10 s"),
        }
    }
}

fn elapsed_ms(from: Instant, to: Instant) -> u64 {
    to.duration_since(from).as_millis() as u64
}

#[tokio::test]
async fn a_partial_header_is_cut_after_the_header_read_timeout() {
    let (addr, _stop, _task) = start().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let sent = Instant::now();
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let (read, closed) = read_until_closed(&mut stream).await;
    let waited = elapsed_ms(sent, closed);
    assert!(read.is_empty(), "no answer to a partial request: {read:?}");
    assert!(
        (HEADER_MS - 50..IDLE_MS).contains(&waited),
        "closed after {waited} ms (header timeout {HEADER_MS} ms, idle {IDLE_MS} ms)"
    );
}

#[tokio::test]
async fn a_silent_client_is_cut_after_the_idle_timeout() {
    let (addr, _stop, _task) = start().await;
    let connected = Instant::now();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut stream).await;
    let waited = elapsed_ms(connected, closed);
    assert!(
        (IDLE_MS - 50..IDLE_MS * 3).contains(&waited),
        "closed after {waited} ms (idle timeout {IDLE_MS} ms)"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_cut_after_the_idle_timeout() {
    let (addr, _stop, _task) = start().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let answered = Instant::now();
    let response = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    // Kept alive past the header timeout: only the idle timeout closes it.
    let (rest, closed) = read_until_closed(&mut stream).await;
    assert!(rest.is_empty(), "{rest:?}");
    let waited = elapsed_ms(answered, closed);
    assert!(
        (IDLE_MS - 50..IDLE_MS * 3).contains(&waited),
        "closed {waited} ms after the response (idle timeout {IDLE_MS} ms)"
    );
}

#[tokio::test]
async fn a_request_in_flight_outlasts_the_idle_timeout() {
    let (addr, _stop, _task) = start().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (response, _) = read_until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slow"), "{response}");
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_refuses_new_connections() {
    let (addr, stop, task) = start().await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let (response, _) = read_until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns once the request is done")
        .unwrap();
    assert!(TcpStream::connect(&addr).await.is_err());
}
