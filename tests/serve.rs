//! `burrow serve`, the web explorer: every page and every `/api/` answer
//! over a store the test publishes, new versions appearing while it runs,
//! bad input answered with a 4xx page (never a 500), values from the data
//! escaped, and the pages rendered by a real headless browser (Debian's
//! chromium) whose links lead from the timeline to a record and to a diff.

use crate::common::cli::*;
use crate::common::tools::require_chromium;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `burrow serve` process on a free port, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Served {
    fn start(store: &Path, cache: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("--store")
            .arg(store)
            .args(["serve", "--addr", "127.0.0.1:0", "--interval-ms", "100"])
            .arg("--cache")
            .arg(cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("burrow serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line.trim().strip_prefix("serving http://") else {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("burrow serve did not start: {line}{err}");
        };
        // Drained, so that nothing the server logs can block it.
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Served {
            addr: url.trim_end_matches('/').parse().unwrap(),
            child,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get(&self, path: &str) -> Reply {
        get(self.addr, path)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, content type, body.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "JSON expected, got {}: {}",
            self.content_type,
            self.body
        );
        serde_json::from_str(&self.body).unwrap()
    }
}

/// GET `path` over a plain HTTP/1.0 exchange (the test's own client: the
/// server's framework is what is under test).
fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn demo(store: &Path, cache: &Path, cycles: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .arg("--store")
        .arg(store)
        .args(["demo", "--records", "300", "--cycles", cycles])
        .arg("--cache")
        .arg(cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "demo: {}", text(&out.stderr));
}

fn ok_html(s: &Served, path: &str, needles: &[&str]) -> String {
    let r = s.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert!(
        r.content_type.starts_with("text/html"),
        "{path}: {}",
        r.content_type
    );
    for n in needles {
        assert!(r.body.contains(n), "{path} lacks {n:?}: {}", r.body);
    }
    r.body
}

fn ok_json(s: &Served, path: &str) -> Value {
    let r = s.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

#[test]
fn every_page_and_api_answers_and_new_versions_appear() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    demo(&store, &dir.path().join("demo-cache"), "3");
    let s = Served::start(&store, &dir.path().join("serve-cache"));

    // The timeline: one object per announced version, newest first.
    let versions = ok_json(&s, "/api/versions");
    let listed: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [3, 2, 1]);
    assert_eq!(versions[0]["records"], 300);
    assert_eq!(versions[0]["types"][0]["url_name"], "Movie");
    assert!(versions[0]["snapshot_bytes"].as_u64().unwrap() > 0);
    assert!(versions[0]["producer"]
        .as_str()
        .unwrap()
        .starts_with("burrow-demo"));
    ok_html(
        &s,
        "/",
        &[
            "id=\"timeline\"",
            "href=\"/versions/3\"",
            "href=\"/diff?from=2&amp;to=3\"",
        ],
    );

    // A version: its types, counts and schema.
    let v = ok_json(&s, "/api/versions/2");
    assert_eq!(v["version"], 2);
    assert_eq!(v["types"][0]["records"], 300);
    assert!(v["schema"].as_str().unwrap().contains("struct Movie"));
    ok_html(
        &s,
        "/versions/2",
        &["struct Movie", "href=\"/versions/2/types/Movie\""],
    );

    // The browser: a page of records, then the next, then a filter.
    let page = ok_json(&s, "/api/versions/3/types/Movie?per=10");
    assert_eq!(page["rows"].as_array().unwrap().len(), 10);
    assert_eq!(page["rows"][0]["ordinal"], 0);
    assert_eq!(page["next"], 10);
    let next = ok_json(&s, "/api/versions/3/types/Movie?per=10&from=10");
    assert_eq!(next["rows"][0]["ordinal"], 10);
    let filtered = ok_json(
        &s,
        "/api/versions/3/types/Movie?field=title&match=Title%20number%2042&per=500",
    );
    let keys: Vec<&str> = filtered["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["42"], "only the title that contains the text");
    assert!(filtered["rows"][0]["value"]
        .as_str()
        .unwrap()
        .starts_with("Title number 42"));
    ok_html(
        &s,
        "/versions/3/types/Movie?field=year&per=5",
        &["id=\"records\"", "<th>year</th>", "id=\"next\""],
    );

    // A record by key and by ordinal.
    let r = ok_json(&s, "/api/versions/3/types/Movie/record?key=42");
    assert_eq!(r["ordinal"], 42);
    assert_eq!(r["record"]["id"], 42);
    let by_ordinal = ok_json(&s, "/api/versions/3/types/Movie/record?ordinal=42");
    assert_eq!(by_ordinal["record"], r["record"]);
    ok_html(
        &s,
        "/versions/3/types/Movie/record?key=id%3D42",
        &[
            "id=\"record\"",
            "Title number 42",
            "href=\"/history?type=Movie&amp;key=42\"",
        ],
    );

    // A diff and a history, which agree with `burrow diff` and `history`.
    let d = ok_json(&s, "/api/diff?from=1&to=3");
    let cli = json_lines(&burrow(
        &store,
        &[
            "--json",
            "diff",
            "1",
            "3",
            "--cache",
            dir.path().join("cli-cache").to_str().unwrap(),
        ],
    ));
    assert_eq!(d, cli[0]);
    assert_eq!(d["method"], "deltas");
    ok_html(
        &s,
        "/diff?from=1&to=3",
        &["id=\"diff-summary\"", "class=\"changed\""],
    );
    let h = ok_json(&s, "/api/history?type=Movie&key=2");
    assert_eq!(h["entries"][0]["change"], "oldest");
    ok_html(&s, "/history?key=2", &["id=\"history\"", "oldest"]);

    // The server's own consumer.
    let health = ok_json(&s, "/api/health");
    assert_eq!(health["explorer"]["newest_version"], 3);
    ok_html(&s, "/health", &["id=\"consumer\"", "consecutive_failures"]);

    // A new version is picked up by the server's consumer, and the
    // explorer follows it.
    demo(&store, &dir.path().join("demo-cache"), "1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let newest = ok_json(&s, "/api/health")["explorer"]["newest_version"]
            .as_u64()
            .unwrap();
        if newest == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "version 4 never appeared (newest {newest})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let health = ok_json(&s, "/api/health");
    assert_eq!(health["consumer"]["version"], 4);
    assert_eq!(health["current"], true);
    assert!(health["explorer"]["refreshes"].as_u64().unwrap() >= 1);
    assert_eq!(ok_json(&s, "/api/versions")[0]["version"], 4);
    ok_html(
        &s,
        "/versions/4",
        &["Version 4", "href=\"/diff?from=3&amp;to=4\""],
    );
}

#[test]
fn bad_input_gets_a_clear_4xx_page_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    demo(&store, &dir.path().join("demo-cache"), "2");
    let s = Served::start(&store, &dir.path().join("serve-cache"));
    // Version 1 retired by retention before the server ever read it.
    let gc = burrow(&store, &["gc", "--keep", "1", "--grace", "0s"]);
    assert!(gc.status.success(), "gc: {}", text(&gc.stderr));
    let gone = s.get("/versions/1");
    assert_eq!(gone.status, 410, "{}", gone.body);
    assert!(gone.body.contains("no longer retained"), "{}", gone.body);
    assert_eq!(s.get("/api/versions/1").status, 410);
    let timeline = s.get("/api/versions");
    assert_eq!(timeline.status, 200, "the timeline shows what it can");
    let timeline = timeline.json();
    assert!(timeline[1]["unavailable"]
        .as_str()
        .unwrap()
        .contains("no longer retained"));
    assert_eq!(timeline[0]["records"], 300);
    let cases: &[(&str, u16, &str)] = &[
        ("/versions/9", 404, "version 9 was never announced"),
        ("/versions/abc", 400, "invalid version \"abc\""),
        ("/versions/0", 400, "versions start at 1"),
        ("/versions/2/types/Nope", 404, "has no type \"Nope\""),
        ("/versions/2/types/Movie?per=0", 400, "invalid per 0"),
        (
            "/versions/2/types/Movie?from=-1",
            400,
            "invalid from \"-1\"",
        ),
        ("/versions/2/types/Movie?match=x", 400, "needs the field"),
        ("/versions/2/types/Movie?field=nosuch", 400, "nosuch"),
        (
            "/versions/2/types/Movie/record",
            400,
            "missing key or ordinal",
        ),
        ("/versions/2/types/Movie/record?key=abc", 400, "bad key"),
        (
            "/versions/2/types/Movie/record?key=99999",
            404,
            "no record with key",
        ),
        (
            "/versions/2/types/Movie/record?ordinal=99999",
            404,
            "no record with ordinal",
        ),
        (
            "/versions/2/types/Movie/record?key=1&ordinal=1",
            400,
            "not both",
        ),
        ("/diff?from=1", 400, "missing to"),
        ("/diff?from=1&to=x", 400, "invalid to"),
        ("/diff?from=2&to=7", 404, "version 7 was never announced"),
        ("/history", 400, "missing key"),
        ("/history?key=99999", 404, "no retained version holds"),
        (
            "/history?key=1&type=Nope",
            404,
            "no retained version holds a record of Nope",
        ),
        ("/no/such/page", 404, "/no/such/page"),
    ];
    for (path, status, says) in cases {
        let page = s.get(path);
        assert_eq!(page.status, *status, "{path}: {}", page.body);
        assert!(page.content_type.starts_with("text/html"), "{path}");
        let escaped = says.replace('"', "&quot;");
        assert!(
            page.body.contains(&escaped) && page.body.contains("id=\"problem\""),
            "{path}: the page names the problem ({says}): {}",
            page.body
        );
        let api = s.get(&format!("/api{path}"));
        assert_eq!(api.status, *status, "/api{path}: {}", api.body);
        let j = api.json();
        assert_eq!(j["status"], *status);
        assert!(
            j["error"].as_str().unwrap().contains(says),
            "/api{path}: {j}"
        );
    }
    // Bad settings and an empty store are refused before serving.
    let cache = dir.path().join("other-cache");
    let cache = cache.to_str().unwrap();
    assert_refused(
        &burrow(&store, &["serve", "--addr", "localhost", "--cache", cache]),
        "invalid --addr \"localhost\"",
    );
    assert_refused(
        &burrow(&store, &["serve", "--interval-ms", "0", "--cache", cache]),
        "invalid --interval-ms 0",
    );
    let taken = s.addr.to_string();
    assert_refused(
        &burrow(&store, &["serve", "--addr", &taken, "--cache", cache]),
        &format!("cannot listen on {taken}"),
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_refused(
        &burrow(
            &empty,
            &["serve", "--addr", "127.0.0.1:0", "--cache", cache],
        ),
        "nothing has been announced",
    );

    // What a request echoes back is escaped, never markup.
    let page = s.get("/versions/2/types/Movie/record?key=%3Cscript%3Ealert(1)%3C/script%3E");
    assert_eq!(page.status, 400);
    assert!(!page.body.contains("<script>"), "{}", page.body);
    assert!(
        page.body.contains("&lt;script&gt;alert(1)"),
        "{}",
        page.body
    );
}

/// Every value from the data reaches the page escaped: a title that is
/// markup shows as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_from_the_data_are_escaped() {
    use burrow::explore::web::{WebConfig, WebServer};
    let dir = tempfile::tempdir().unwrap();
    let store = burrow::blobstore::BlobStore::local(dir.path().join("store")).unwrap();
    let producer = crate::common::producer(&store, "escape-test");
    let title = "<script>alert('x')</script> & <b>bold</b>";
    let model = [(1, (title.to_string(), 1999, vec!["<i>tag</i>".to_string()]))]
        .into_iter()
        .collect();
    crate::common::publish(&producer, &model).await.unwrap();
    let server = WebServer::start(
        store,
        WebConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            cache_dir: dir.path().join("serve-cache"),
            interval: Duration::from_millis(100),
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    for path in [
        "/versions/1/types/Movie/record?key=1",
        "/versions/1/types/Movie",
        "/history?key=1",
    ] {
        let page = tokio::task::spawn_blocking(move || get(addr, path))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<b>bold"), "{path}: {}", page.body);
        assert!(
            page.body.contains("&lt;script&gt;alert"),
            "{path}: {}",
            page.body
        );
    }
    server.shutdown().await.unwrap();
}

/// Runs chromium headless on `url` with `args`; its stdout.
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(require_chromium().unwrap())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?} {url} failed: {status}");
            return reader.join().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} {url} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first `href` of an `<a>` with `class` in `dom` (as chromium
/// serialises it: attributes double-quoted, `&` as `&amp;`).
fn link(dom: &str, class: &str) -> String {
    let marker = format!("class=\"{class}\" href=\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no link of class {class} in {dom}"))
        + marker.len();
    let end = start + dom[start..].find('"').unwrap();
    dom[start..end].replace("&amp;", "&")
}

fn screenshots_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("explorer-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_headless_browser_follows_the_timeline_to_a_record_and_a_diff() {
    require_chromium().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    demo(&store, &dir.path().join("demo-cache"), "3");
    let s = Served::start(&store, &dir.path().join("serve-cache"));
    let profile = dir.path().join("chromium");
    let shots = screenshots_dir();
    let shot = |name: &str, url: &str| {
        let file = shots.join(name);
        let _ = std::fs::remove_file(&file);
        chromium(
            &profile,
            &[
                &format!("--screenshot={}", file.display()),
                "--window-size=1200,640",
            ],
            url,
        );
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", file.display());
    };

    // The timeline, rendered.
    let timeline = chromium(&profile, &["--dump-dom"], &s.url("/"));
    assert!(timeline.contains("<h1>Timeline</h1>"), "{timeline}");
    assert_eq!(
        timeline.matches("<tr data-version=").count(),
        3,
        "{timeline}"
    );
    shot("timeline.png", &s.url("/"));

    // Timeline → version → type → a record.
    let version = link(&timeline, "version");
    assert_eq!(version, "/versions/3");
    let version_dom = chromium(&profile, &["--dump-dom"], &s.url(&version));
    assert!(version_dom.contains("struct Movie"), "{version_dom}");
    let browse = link(&version_dom, "type");
    let browse_dom = chromium(&profile, &["--dump-dom"], &s.url(&browse));
    assert!(browse_dom.contains("id=\"records\""), "{browse_dom}");
    let record = link(&browse_dom, "record");
    assert_eq!(record, "/versions/3/types/Movie/record?key=0");
    let record_dom = chromium(&profile, &["--dump-dom"], &s.url(&record));
    assert!(
        record_dom.contains("<title>Movie 0 at version 3"),
        "{record_dom}"
    );
    assert!(
        record_dom.contains("\"title\": \"Title number 0"),
        "{record_dom}"
    );
    shot("record.png", &s.url(&record));

    // Timeline → the diff of the newest version from its predecessor.
    let diff = link(&timeline, "diff");
    assert_eq!(diff, "/diff?from=2&to=3");
    let diff_dom = chromium(&profile, &["--dump-dom"], &s.url(&diff));
    assert!(diff_dom.contains("id=\"diff-summary\""), "{diff_dom}");
    assert!(diff_dom.contains("read from 1 delta(s)"), "{diff_dom}");
    assert!(diff_dom.contains("<tr class=\"changed\">"), "{diff_dom}");
    // From the diff to a changed record at the newer version.
    let changed = link(&diff_dom, "record");
    assert!(
        changed.starts_with("/versions/3/types/Movie/record?key="),
        "{changed}"
    );
    let changed_dom = chromium(&profile, &["--dump-dom"], &s.url(&changed));
    assert!(changed_dom.contains("id=\"record\""), "{changed_dom}");
    shot("diff.png", &s.url(&diff));

    // A bad link is a clear page in the browser too.
    let bad = chromium(&profile, &["--dump-dom"], &s.url("/versions/99"));
    assert!(
        bad.contains("404 Not Found") && bad.contains("never announced"),
        "{bad}"
    );
}

/// A long-running server keeps a bounded number of blobs open: a request
/// that opens more than [`burrow::explore::web::MAX_OPEN_BLOBS`] leaves
/// them to be released before the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_blobs_stay_bounded() {
    use burrow::explore::web::{WebConfig, WebServer, MAX_OPEN_BLOBS};
    let dir = tempfile::tempdir().unwrap();
    let store = burrow::blobstore::BlobStore::local(dir.path().join("store")).unwrap();
    let producer = crate::common::producer(&store, "bound-test");
    let versions = MAX_OPEN_BLOBS as u64 + 6;
    for generation in 0..versions {
        let model = (0..3)
            .map(|i| (i, crate::common::movie_value(i, generation)))
            .collect();
        crate::common::publish(&producer, &model).await.unwrap();
    }
    let server = WebServer::start(
        store,
        WebConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            cache_dir: dir.path().join("serve-cache"),
            interval: Duration::from_millis(100),
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let fetch = |path: &'static str| tokio::task::spawn_blocking(move || get(addr, path));
    // The consumer's first refresh releases the explorer's blobs too: wait
    // for it, so that only the bound can release what follows.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fetch("/api/health").await.unwrap().json()["explorer"]["refreshes"] == 0 {
        assert!(Instant::now() < deadline, "the consumer never refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every version's counts: a blob or more per version, all in one request.
    let all = fetch("/api/versions").await.unwrap();
    assert_eq!(all.status, 200);
    assert_eq!(all.json().as_array().unwrap().len() as u64, versions);
    let health = fetch("/api/health").await.unwrap().json();
    let open = health["explorer"]["open_blobs"].as_u64().unwrap();
    assert!(
        open <= MAX_OPEN_BLOBS as u64,
        "{open} blobs open after a request that opened {versions} versions"
    );
    server.shutdown().await.unwrap();
}
