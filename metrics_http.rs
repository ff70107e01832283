//! The process's metrics at `/metrics` in the Prometheus text format, for an
//! operator's scraper: the consumer's version, the newest announced version,
//! seconds since the last successful refresh, the breaker's state, refresh
//! durations, bytes fetched, and whatever else burrow records through the
//! `metrics` facade (the producer's cycles, the notifier's queue).
//!
//! [`serve`] installs `metrics-exporter-prometheus`'s recorder as the
//! process's global recorder and answers scrapes with a small HTTP/1.1
//! server of its own on tokio (the exporter's hyper listener is left out):
//! `GET /metrics` gets the rendered text, any other path a 404, another
//! method a 405, and a request that is not HTTP, or longer than
//! [`MAX_REQUEST_BYTES`], a 400 or 431. Every connection is closed after
//! its one response; a client that sends nothing is dropped after
//! [`READ_TIMEOUT`]. Garbage never panics the server and never stops it.
//!
//! The recorder is process-global and stays installed once `serve` put it
//! there: a later `serve` reuses it, and a recorder that something else
//! installed first is an error ([`MetricsHttpError::RecorderInstalled`]).

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The longest request (request line and headers) the server reads.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, and how many bytes, a closing connection reads of what the
/// client still sends.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// The content type of the Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsHttpError {
    /// Another metrics recorder (not burrow's Prometheus recorder) is the
    /// process's global recorder; the `metrics` facade allows one.
    #[error(
        "cannot install the Prometheus metrics recorder: another `metrics` recorder is already installed in this process"
    )]
    RecorderInstalled,
    /// The address could not be bound.
    #[error("cannot listen for metrics scrapes on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// A running metrics server; dropping it (or [`MetricsServer::stop`]) stops
/// accepting scrapes. The recorder stays installed.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address the server listens on (the bound port when asked for
    /// port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server.
    pub fn stop(self) {}
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the process's metrics at `http://addr/metrics`. Must be called
/// within a tokio runtime (the server runs on it).
pub async fn serve(addr: SocketAddr) -> Result<MetricsServer, MetricsHttpError> {
    serve_with(addr, || {}).await
}

/// [`serve`], calling `before_render` before each scrape is rendered: a
/// read service passes a closure that calls
/// [`Consumer::health`](crate::consumer::Consumer::health), which sets
/// `burrow_consumer_seconds_since_refresh` to the time since the last
/// successful refresh at the moment of the scrape.
pub async fn serve_with(
    addr: SocketAddr,
    before_render: impl Fn() + Send + Sync + 'static,
) -> Result<MetricsServer, MetricsHttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsHttpError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsHttpError::Bind { addr, source })?;
    let handle = recorder()?;
    let render = Arc::new(move || {
        before_render();
        // Drains histogram samples into their summaries; the exporter
        // leaves scheduling this to whoever owns the recorder.
        handle.run_upkeep();
        handle.render()
    });
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let render = Arc::clone(&render);
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &*render).await {
                    tracing::debug!(error = %e, "metrics server: connection failed");
                }
            });
        }
    });
    Ok(MetricsServer { addr: local, task })
}

/// The recorder's handle, installing it on first use.
fn recorder() -> Result<PrometheusHandle, MetricsHttpError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    static INSTALL: Mutex<()> = Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        // install_recorder fails only in setting the global recorder.
        .map_err(|_: BuildError| MetricsHttpError::RecorderInstalled)?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric burrow records, with the `# HELP` text a scrape shows.
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    ("burrow_consumer_version", Kind::Gauge, "The version the consumer serves."),
    ("burrow_consumer_newest_announced_version", Kind::Gauge, "The version the announcement log asks consumers to be at (the pin, if any), as of the last poll."),
    ("burrow_consumer_seconds_since_refresh", Kind::Gauge, "Seconds since the consumer's last successful refresh or poll that found it current."),
    ("burrow_consumer_breaker_open", Kind::Gauge, "1 while the circuit breaker in front of the store is open or half-open, else 0."),
    ("burrow_consumer_cache_bytes", Kind::Gauge, "Bytes of blobs in the consumer's cache after its last trim."),
    ("burrow_consumer_cache_files", Kind::Gauge, "Blob files in the consumer's cache after its last trim."),
    ("burrow_consumer_notify_push", Kind::Gauge, "1 while the notification channel is healthy (versions arrive by push), else 0 (polling)."),
    ("burrow_consumer_refreshes_total", Kind::Counter, "Refreshes that moved the consumer to a new state."),
    ("burrow_consumer_refresh_failures_total", Kind::Counter, "Polls or refreshes that failed (the consumer kept serving its state)."),
    ("burrow_consumer_replans_total", Kind::Counter, "Refresh plans made again around a blob found gone from the store."),
    ("burrow_consumer_fetched_bytes_total", Kind::Counter, "Bytes of blobs fetched from the store into the cache."),
    ("burrow_consumer_cache_faults_total", Kind::Counter, "Cache files found corrupt when re-verified (each evicted and refetched)."),
    ("burrow_consumer_cache_evicted_files_total", Kind::Counter, "Blob files evicted from the cache by its bound."),
    ("burrow_consumer_cache_evicted_bytes_total", Kind::Counter, "Bytes evicted from the cache by its bound."),
    ("burrow_consumer_cache_evict_failures_total", Kind::Counter, "Cache files the trim could not remove."),
    ("burrow_consumer_notify_ignored_total", Kind::Counter, "Notifications dropped unread: malformed, of another dataset, or of an entry already seen."),
    ("burrow_consumer_notify_unconfirmed_total", Kind::Counter, "Notifications of an entry the announcement log did not have."),
    ("burrow_consumer_change_failures_total", Kind::Counter, "Refreshes whose changes could not be computed for the refresh listeners (they are told so)."),
    ("burrow_consumer_listener_panics_total", Kind::Counter, "Refresh listeners that panicked (the state was swapped in regardless)."),
    ("burrow_consumer_refresh_seconds", Kind::Histogram, "Time of a refresh that moved the consumer, planning to swap."),
    ("burrow_consumer_warm_up_seconds", Kind::Histogram, "Time spent bringing a new state's pages in before its swap."),
    ("burrow_producer_version", Kind::Gauge, "The producer's last announced version."),
    ("burrow_producer_cycles_total", Kind::Counter, "Producer cycles run."),
    ("burrow_producer_cycle_failures_total", Kind::Counter, "Producer cycles that failed (nothing they wrote was announced)."),
    ("burrow_producer_cycle_seconds", Kind::Histogram, "Time of a producer cycle."),
    ("burrow_producer_sweep_failures_total", Kind::Counter, "Sweeps of leftovers of interrupted writes that failed at restore."),
    ("burrow_producer_gc_failures_total", Kind::Counter, "The producer's background retention runs that failed."),
    ("burrow_producer_notify_queue_depth", Kind::Gauge, "Notifications waiting to be delivered to the channel."),
    ("burrow_producer_notify_breaker_open", Kind::Gauge, "1 while the breaker in front of the notification channel is open or half-open, else 0."),
    ("burrow_producer_notify_delivered_total", Kind::Counter, "Notifications delivered to the channel."),
    ("burrow_producer_notify_failures_total", Kind::Counter, "Attempts to deliver a notification or heartbeat that failed."),
    ("burrow_gc_runs_total", Kind::Counter, "Retention (gc) runs."),
    ("burrow_gc_deleted_blobs_total", Kind::Counter, "Blobs retention deleted."),
    ("burrow_gc_deleted_bytes_total", Kind::Counter, "Bytes retention deleted."),
    ("burrow_gc_kept_bytes", Kind::Gauge, "Bytes of blobs the last retention run kept."),
    ("burrow_gc_leftovers_deleted_total", Kind::Counter, "Leftovers of interrupted writes deleted."),
];

/// Gives every metric its `# HELP` text.
fn describe() {
    for &(name, kind, text) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, text),
            Kind::Gauge => metrics::describe_gauge!(name, text),
            Kind::Histogram => metrics::describe_histogram!(name, text),
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    WrongMethod,
    Bad,
    TooLarge,
}

/// Reads one request, writes one response, closes the connection.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(read) => read?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = match request {
        Request::Metrics => ("200 OK", CONTENT_TYPE, render()),
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found: burrow serves /metrics\n".into(),
        ),
        Request::WrongMethod => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed: /metrics answers GET\n".into(),
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain",
            "bad request: not an HTTP/1 request\n".into(),
        ),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            format!("request too large: over {MAX_REQUEST_BYTES} bytes\n"),
        ),
    };
    let allow = if request == Request::WrongMethod {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    // Lingering close: closing with unread input (the rest of a request
    // too large to read) would reset the connection and could destroy the
    // answer before the client reads it, so read what the client still
    // sends, bounded in bytes and time, before dropping the socket.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Reads up to the end of the headers (the blank line) and classifies the
/// request line.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            return Ok(classify(&buf[..end]));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Request::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // Closed before the blank line: answer what arrived, if any.
            return Ok(if buf.is_empty() {
                Request::Bad
            } else {
                classify(&buf)
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The request line: `METHOD SP TARGET SP HTTP/1.x`.
fn classify(head: &[u8]) -> Request {
    let Ok(head) = std::str::from_utf8(head) else {
        return Request::Bad;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics,
        (_, "/metrics") => Request::WrongMethod,
        _ => Request::NotFound,
    }
}

#[cfg(test)]
mod described {
    /// Every metric the crate records has a description of its kind: the
    /// sources are read for `counter!`, `gauge!` and `histogram!` calls.
    #[test]
    fn every_recorded_metric_is_described() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        for dir in [
            "consumer",
            "producer",
            "notify",
            "gc",
            "blobstore",
            "announcer",
        ] {
            collect(&root.join(dir), &mut found);
        }
        assert!(found.len() > 20, "found only {found:?}");
        for (kind, name) in found {
            let described = super::DESCRIPTIONS
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} has no description in DESCRIPTIONS"));
            assert_eq!(format!("{:?}", described.1).to_lowercase(), kind, "{name}");
        }
    }

    fn collect(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for kind in ["counter", "gauge", "histogram"] {
                    for piece in text.split(&format!("{kind}!(")).skip(1) {
                        let piece = piece.trim_start();
                        if let Some(rest) = piece.strip_prefix('"') {
                            let name = rest.split('"').next().unwrap_or("");
                            if name.starts_with("burrow_") {
                                out.push((kind.to_string(), name.to_string()));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_lines() {
        let cases: &[(&[u8], Request)] = &[
            (b"GET /metrics HTTP/1.1\r\nHost: x", Request::Metrics),
            (b"GET /metrics?name=x HTTP/1.0", Request::Metrics),
            (b"GET / HTTP/1.1", Request::NotFound),
            (b"GET /metricsx HTTP/1.1", Request::NotFound),
            (b"POST /metrics HTTP/1.1", Request::WrongMethod),
            (b"GET /metrics", Request::Bad),
            (b"GET /metrics HTTP/2", Request::Bad),
            (b"GET  /metrics HTTP/1.1", Request::Bad),
            (b"get /metrics HTTP/1.1", Request::Bad),
            (b"GET metrics HTTP/1.1", Request::Bad),
            (b"\xff\xfe\x00garbage", Request::Bad),
            (b"", Request::Bad),
        ];
        for (head, want) in cases {
            assert_eq!(&classify(head), want, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
