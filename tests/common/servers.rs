//! Notification servers the notify tests run: Debian's `redis-server` and
//! `nats-server`, started by the tests themselves on 127.0.0.1, one per
//! test, and killed with it.
//!
//! A test can kill its server (SIGKILL), start it again on the same port,
//! and freeze and thaw it (SIGSTOP, SIGCONT). A missing binary fails the
//! test with the package that provides it (`.ci/run` installs both).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::Nats => "nats-server",
        }
    }

    fn args(self, port: u16) -> Vec<String> {
        let port = port.to_string();
        match self {
            Kind::Redis => [
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec(),
            Kind::Nats => ["-a", "127.0.0.1", "-p", &port].map(String::from).to_vec(),
        }
    }
}

/// A running (or killed) server on a fixed port.
pub struct Server {
    kind: Kind,
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts `kind` on a free port and waits (at most 20 s) until it
    /// accepts connections.
    pub fn start(kind: Kind) -> Server {
        let mut server = Server {
            kind,
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its port (after [`Server::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
        let binary = self.kind.binary();
        let mut command = Command::new(binary);
        command
            .args(self.kind.args(self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        super::tools::die_with_spawner(&mut command);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {binary} ({e}): install Debian's {binary} package \
                 (apt-get install {binary}; .ci/run does)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{binary} on port {} exited at start: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "{binary} did not listen on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("the server runs").id() as libc::pid_t;
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill has no memory preconditions.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "signal {signal} to {pid}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server must be thawed to die promptly.
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// A port nothing listens on now (the kernel's pick, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
