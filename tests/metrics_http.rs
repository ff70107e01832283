//! `burrow follow --metrics-addr` serves the consumer's metrics at
//! `/metrics` in the Prometheus text format: scraped over a real TCP
//! connection, the version gauge follows what the follower reached, the
//! other named metrics are there, and bad requests get their status without
//! stopping the server.

use crate::common::cli::{assert_fails, burrow};
use crate::common::*;
use burrow::blobstore::BlobStore;
use burrow::producer::{Producer, ProducerBuilder};
use burrow::schema::examples::movies_capnp::movie;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

fn producer(store: &BlobStore) -> Producer {
    ProducerBuilder::new(store.clone())
        .producer_id("p")
        .primary_key::<movie::Owned>(&["id"])
        .build()
        .unwrap()
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on its own connection: the status line, the headers and
/// the body of the answer (the server closes after answering).
fn http(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {answer:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    body
}

/// The value of an unlabelled sample, if the scrape has it.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Reads JSON events until one satisfies `want`.
fn wait_for(
    lines: &mut BufReader<ChildStdout>,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let mut line = String::new();
        assert!(
            lines.read_line(&mut line).unwrap() > 0,
            "follow exited before the event"
        );
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if want(&event) {
            return event;
        }
    }
}

/// Invariant: a scrape reports the version the follower reached, the newest
/// announced version, the time since its last success, the breaker, the
/// refresh durations and the bytes fetched, and answers 404, 405, 400 and
/// 431 to what it does not serve while going on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_serves_metrics_a_scraper_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let producer = producer(&store);
    let mut model: Model = (0..100).map(|i| (i, movie_value(i, 0))).collect();
    let first = publish(&producer, &model).await.unwrap().version;

    let mut follow = Running(
        Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("--store")
            .arg(&store_dir)
            .args(["--json", "follow", "--interval-ms", "20"])
            .args(["--metrics-addr", "127.0.0.1:0", "--cache"])
            .arg(dir.path().join("cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(follow.0.stdout.take().unwrap());
    let event = wait_for(&mut lines, |e| e["event"] == "metrics");
    let url = event["url"].as_str().unwrap().to_string();
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("metrics url {url}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    wait_for(&mut lines, |e| {
        e["event"] == "version" && e["version"] == first
    });

    let body = scrape(addr);
    assert_at_version(&body, first);
    assert!(
        body.contains("# HELP burrow_consumer_version The version the consumer serves."),
        "metrics carry their descriptions: {body}"
    );
    let since = sample(&body, "burrow_consumer_seconds_since_refresh")
        .unwrap_or_else(|| panic!("no seconds since refresh: {body}"));
    assert!(since >= 0.0, "{body}");
    assert_eq!(
        sample(&body, "burrow_consumer_breaker_open"),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(&body, "burrow_consumer_refresh_seconds_count").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        body.contains("# TYPE burrow_consumer_refresh_seconds summary"),
        "{body}"
    );
    let fetched = sample(&body, "burrow_consumer_fetched_bytes_total")
        .unwrap_or_else(|| panic!("no bytes fetched: {body}"));
    assert!(fetched > 0.0, "{body}");

    // What it does not serve, each on its own connection.
    let (status, _, _) = http(addr, b"GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = http(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("Allow: GET"), "{headers}");
    let (status, _, _) = http(addr, b"\x00\xff\xfe garbage \x01\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, _, _) = http(addr, b"no blank line, then the client hangs up");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let (status, _, _) = http(addr, huge.as_bytes());
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    // A connection that sends nothing and hangs up gets no answer, and the
    // server goes on.
    drop(TcpStream::connect(addr).unwrap());

    // Still serving, and following: the gauge moves with the next version.
    for i in 0..10 {
        model.insert(i, movie_value(i, 1));
    }
    let second = publish(&producer, &model).await.unwrap().version;
    wait_for(&mut lines, |e| {
        e["event"] == "version" && e["version"] == second
    });
    let body = scrape(addr);
    assert_at_version(&body, second);
    assert!(
        sample(&body, "burrow_consumer_fetched_bytes_total").is_some_and(|b| b > fetched),
        "{body}"
    );
}

/// A bad `--metrics-addr`, and one already taken, fail with a line naming
/// the flag or the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_bad_metrics_addr_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = BlobStore::local(&store_dir).unwrap();
    let model: Model = (0..10).map(|i| (i, movie_value(i, 0))).collect();
    publish(&producer(&store), &model).await.unwrap();
    for bad in ["localhost", "127.0.0.1", "127.0.0.1:99999", ""] {
        let out = burrow(&store_dir, &["follow", "--metrics-addr", bad]);
        assert_fails(&out, &format!("invalid --metrics-addr {bad:?}"));
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = burrow(&store_dir, &["follow", "--metrics-addr", &addr]);
    assert_fails(
        &out,
        &format!("cannot listen for metrics scrapes on {addr}"),
    );
}

/// The scraped consumer is at `version`, and it is the newest announced.
fn assert_at_version(body: &str, version: u64) {
    for name in [
        "burrow_consumer_version",
        "burrow_consumer_newest_announced_version",
    ] {
        assert_eq!(sample(body, name), Some(version as f64), "{name}: {body}");
    }
}
