//! Outside tools some tests need, provided rather than skipped.
//!
//! No test passes by skipping: a test that needs a tool gets it here, and
//! if it cannot be had, the test fails with a message naming what is
//! missing and the command that installs it.

use std::process::Command;
use std::sync::OnceLock;

/// The reference Cap'n Proto tool (`capnp`) with its standard schemas in
/// `/usr/include/capnp`, from Debian's `capnproto` and `libcapnp-dev`.
/// When they are missing and this process is root on a Debian-like
/// machine, they are installed with apt-get (once per test process), as
/// `.ci/run` does; otherwise the error says how to install them.
pub fn require_capnp() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| provide("`capnp`", &["capnproto", "libcapnp-dev"], capnp_present))
        .clone()
}

/// Debian's `chromium`, for the explorer's headless-browser test
/// (`chromium --headless=new --dump-dom` and `--screenshot`), installed
/// with apt-get like [`require_capnp`]'s tools. Returns its path.
pub fn require_chromium() -> Result<String, String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| provide("`chromium`", &["chromium"], chromium_present))
        .clone()
        .map(|()| "chromium".to_string())
}

/// `tool` present, or installed from `packages` with apt-get when this
/// process is root, or an error naming the packages.
fn provide(tool: &str, packages: &[&str], present: fn() -> bool) -> Result<(), String> {
    if present() {
        return Ok(());
    }
    let how = format!(
        "install Debian's {} (apt-get install {})",
        packages.join(" and "),
        packages.join(" ")
    );
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || Command::new("apt-get").arg("--version").output().is_err()
    {
        return Err(format!("the tool {tool} is missing: {how}"));
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| e.to_string())
            .and_then(|out| {
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
                }
            })
    };
    let mut install = vec!["install", "-y", "-qq"];
    install.extend_from_slice(packages);
    if apt(&install).is_err() {
        apt(&["update", "-qq"])
            .and_then(|()| apt(&install))
            .map_err(|e| {
                format!("the tool {tool} is missing and apt-get could not install it ({e}): {how}")
            })?;
    }
    if present() {
        Ok(())
    } else {
        Err(format!("apt-get ran but {tool} is still missing: {how}"))
    }
}

fn capnp_present() -> bool {
    Command::new("capnp")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && std::path::Path::new("/usr/include/capnp/schema.capnp").is_file()
}

/// Makes a child started by `command` die (SIGKILL) when the thread that
/// spawns it ends (`PR_SET_PDEATHSIG`), so that no server a test starts
/// outlives it. Linux only; elsewhere a no-op.
pub fn die_with_spawner(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing is allocated.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

fn chromium_present() -> bool {
    Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
