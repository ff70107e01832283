//! The S3 servers the S3 tests talk to: real moto servers on 127.0.0.1,
//! started by the tests themselves.
//!
//! Two servers, each started once per test process on first use and shared
//! by every S3 test of the process:
//!
//! - the plain server ([`plain_endpoint`]) accepts any credentials; each
//!   test creates the bucket it uses and works under a random prefix;
//! - the auth server ([`auth_server`]) checks credentials and policies
//!   (moto's IAM authentication); it holds bucket `burrow-auth`, one user
//!   allowed everything, and a user per role of `blobstore/iam/` (consumer,
//!   producer, gc) holding exactly that role's policy for the datasets under
//!   `burrow-auth/roles/`; set up by `.ci/moto_auth_setup.py`.
//!
//! A server named by `BURROW_TEST_S3_ENDPOINT` (or, for the auth server,
//! `BURROW_TEST_S3_AUTH_ENDPOINT` with `BURROW_TEST_S3_AUTH_KEY_ID`,
//! `BURROW_TEST_S3_AUTH_SECRET` and `BURROW_TEST_S3_AUTH_ROLES`, as `eval "$(.ci/s3.sh start)"` exports) is
//! used instead of starting one. Otherwise moto is found as
//! `BURROW_TEST_MOTO` or `.ci/.venv/bin/moto_server`; when the venv is
//! missing (a fresh clone) the tests create it with `.ci/s3.sh venv` (pip
//! from PyPI), falling back to `moto_server` on `PATH`; when none can be
//! had, every S3 test fails with a message saying so and how to install
//! it. No S3 test is ever skipped.
//!
//! Invariants: a started server listens on 127.0.0.1 only, on a port the
//! kernel picked (`-p 0`; the port is read from the server's own "Running
//! on" line, so nothing races for it); the start is bounded
//! ([`START_TIMEOUT`]); and no server outlives the test process: the child
//! gets `PR_SET_PDEATHSIG(SIGKILL)`, tied to a thread that lives exactly as
//! long as the server (it drains the server's output until it closes).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// The variable naming a running plain server instead of starting one.
pub const ENDPOINT_VAR: &str = "BURROW_TEST_S3_ENDPOINT";

/// How long a started server may take to say it listens.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The server that checks credentials.
pub struct AuthServer {
    pub endpoint: String,
    /// The keys of the user allowed `s3:*`.
    pub key: String,
    pub secret: String,
    /// The keys of each role's user: `(role, key, secret)`.
    pub roles: Vec<(String, String, String)>,
}

/// The bucket and the prefix the roles' policies are for.
pub const ROLES_BUCKET: &str = "burrow-auth";
pub const ROLES_PREFIX: &str = "roles/";

impl AuthServer {
    /// The keys of `role`'s user (`consumer`, `producer` or `gc`).
    pub fn role(&self, role: &str) -> (&str, &str) {
        self.roles
            .iter()
            .find(|(name, _, _)| name == role)
            .map(|(_, key, secret)| (key.as_str(), secret.as_str()))
            .unwrap_or_else(|| panic!("the auth server has no user for role {role}"))
    }
}

/// Parses the setup script's output: the `s3:*` user's `key secret` on
/// the first line, then `role key secret` a line per role.
fn parse_setup(endpoint: String, stdout: &str) -> Option<AuthServer> {
    let mut lines = stdout.lines();
    let (key, secret) = lines.next()?.split_once(' ')?;
    let roles = lines
        .map(|line| match line.split(' ').collect::<Vec<_>>()[..] {
            [role, key, secret] => Some((role.into(), key.into(), secret.into())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(AuthServer {
        endpoint,
        key: key.into(),
        secret: secret.into(),
        roles,
    })
}

/// Parses `BURROW_TEST_S3_AUTH_ROLES` (`role:key:secret,...`).
fn parse_roles(value: &str) -> Result<Vec<(String, String, String)>, String> {
    value
        .split(',')
        .map(|item| match item.split(':').collect::<Vec<_>>()[..] {
            [role, key, secret] => Ok((role.into(), key.into(), secret.into())),
            _ => Err(format!(
                "BURROW_TEST_S3_AUTH_ROLES: {item:?} is not role:key:secret"
            )),
        })
        .collect()
}

static PLAIN: OnceLock<Result<String, String>> = OnceLock::new();
static AUTH: OnceLock<Result<AuthServer, String>> = OnceLock::new();

/// The plain server's endpoint (`http://127.0.0.1:<port>`), starting it on
/// first use. Panics, failing the test, with what is missing when there is
/// no server and no moto to start one.
pub fn plain_endpoint() -> String {
    PLAIN
        .get_or_init(|| match named(ENDPOINT_VAR) {
            Some(url) => Ok(url),
            None => start(&find_moto()?, "plain"),
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The auth server, started and set up on first use (see the module docs).
pub fn auth_server() -> &'static AuthServer {
    AUTH.get_or_init(|| {
        if let Some(endpoint) = named("BURROW_TEST_S3_AUTH_ENDPOINT") {
            let var = |name: &str| {
                std::env::var(name)
                    .map_err(|_| format!("{name} must be set with BURROW_TEST_S3_AUTH_ENDPOINT"))
            };
            return Ok(AuthServer {
                endpoint,
                key: var("BURROW_TEST_S3_AUTH_KEY_ID")?,
                secret: var("BURROW_TEST_S3_AUTH_SECRET")?,
                roles: parse_roles(&var("BURROW_TEST_S3_AUTH_ROLES")?)?,
            });
        }
        let moto = find_moto()?;
        let endpoint = start(&moto, "auth")?;
        let python = python_of(&moto)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/moto_auth_setup.py");
        let out = Command::new(&python)
            .arg(&script)
            .arg(&endpoint)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {} {}: {e}", python.display(), script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match parse_setup(endpoint.clone(), &stdout) {
            Some(server) if out.status.success() => Ok(server),
            _ => Err(format!(
                "setting up the auth S3 server at {endpoint} with {} failed ({}): {}{}",
                script.display(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    })
    .as_ref()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A server named by `var`, if it is set; it must be on 127.0.0.1.
fn named(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => {
            assert!(
                url.starts_with("http://127.0.0.1:"),
                "{var}={url}: the S3 tests only talk to a server on 127.0.0.1"
            );
            Some(url)
        }
        _ => None,
    }
}

/// moto's server executable, found (or installed) once per test process,
/// so that two servers starting at once never both create the venv.
fn find_moto() -> Result<PathBuf, String> {
    static MOTO: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MOTO.get_or_init(locate_moto).clone()
}

/// moto's server executable: `BURROW_TEST_MOTO`, the repository's venv
/// (created if missing), or `PATH`.
fn locate_moto() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("BURROW_TEST_MOTO") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "BURROW_TEST_MOTO={} is not a file (it names moto's moto_server)",
                path.display()
            ))
        };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join(".ci/.venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    // A fresh clone: make the repository's venv (pip from PyPI), as
    // `.ci/run` does, so that the README's test command runs the S3 tests
    // with nothing installed by hand.
    let made = std::process::Command::new("bash")
        .arg(root.join(".ci/s3.sh"))
        .arg("venv")
        .output();
    let venv_failure = match made {
        Ok(out) if out.status.success() && venv.is_file() => return Ok(venv),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("moto_server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.ok_or_else(|| {
        format!(
            "the S3 tests need an S3 server and found none: BURROW_TEST_S3_ENDPOINT is not set, \
             moto's moto_server is neither at BURROW_TEST_MOTO nor on PATH, and creating {} \
             with `.ci/s3.sh venv` failed ({venv_failure}). Install it with: .ci/s3.sh venv",
            venv.display()
        )
    })
}

/// The python that runs `moto` (for the setup script, which needs boto3):
/// the `python` beside it in a venv, else its `#!` interpreter when that is
/// a python, else `python3` (a pyenv shim's `#!` is bash; the `python3`
/// shim beside it resolves to the same environment).
fn python_of(moto: &Path) -> Result<PathBuf, String> {
    let beside = moto.with_file_name("python");
    if beside.is_file() {
        return Ok(beside);
    }
    let text = std::fs::read(moto).map_err(|e| format!("read {}: {e}", moto.display()))?;
    let shebang = String::from_utf8_lossy(text.split(|&b| b == b'\n').next().unwrap_or(&[]))
        .strip_prefix("#!")
        .and_then(|line| line.split_whitespace().next())
        .map(PathBuf::from)
        .filter(|interpreter| {
            interpreter
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("python"))
        });
    Ok(shebang.unwrap_or_else(|| moto.with_file_name("python3")))
}

/// Starts `moto` on 127.0.0.1 and a free port; returns its endpoint once it
/// says it listens, within [`START_TIMEOUT`].
fn start(moto: &Path, role: &str) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    let owned = moto.to_path_buf();
    std::thread::Builder::new()
        .name(format!("moto-{role}"))
        .spawn(move || keep(&owned, tx))
        .map_err(|e| format!("start a thread for moto: {e}"))?;
    rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
        Err(format!(
            "the {role} S3 server ({}) did not say it was listening within {START_TIMEOUT:?}",
            moto.display()
        ))
    })
}

/// Runs one server for the rest of the process: spawns it, reports its
/// endpoint (or why it has none) on `tx`, then drains its output until it
/// exits. The server dies with this thread (`PR_SET_PDEATHSIG`), and this
/// thread only ends when the server has, or when the process does.
fn keep(moto: &Path, tx: mpsc::Sender<Result<String, String>>) {
    // moto_server's main, run with its key writes serialised: moto alone
    // lets two racing conditional creates both succeed (.ci/moto_serial.py).
    let python = match python_of(moto) {
        Ok(python) => python,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/moto_serial.py");
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    crate::common::tools::die_with_spawner(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = tx.send(Err(format!(
                "start {} {}: {e}",
                python.display(),
                script.display()
            )));
            return;
        }
    };
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut waiting = Some(tx);
    let mut output = Vec::new();
    const MARK: &str = "Running on http://127.0.0.1:";
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(tx) = waiting.as_ref() {
            if let Some(at) = line.find(MARK) {
                let port: String = line[at + MARK.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let _ = tx.send(Ok(format!("http://127.0.0.1:{port}")));
                waiting = None;
                output.clear();
            } else {
                output.push(line);
            }
        }
    }
    let status = child.wait();
    if let Some(tx) = waiting {
        let _ = tx.send(Err(format!(
            "{} exited ({status:?}) before listening; its output:\n{}",
            moto.display(),
            output.join("\n")
        )));
    }
}
