//! Invariant: the Python reader (`python/`) reads every record the Rust
//! consumer reads. Runs its pytest suite (python/tests) with the venv's
//! python, the burrow binary cargo built named by `BURROW_BIN`: the suite
//! writes its stores with that binary and compares what Python reads with
//! `burrow dump --json`, at a snapshot, after deltas and reverse deltas,
//! on S3 (moto) and against hostile store content.

use std::path::Path;
use std::process::Command;

#[test]
fn python_reader_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".ci/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/s3.sh venv (it installs pycapnp, xxhash, zstandard, boto3, pytest)",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-c", "import capnp, xxhash, zstandard, boto3, pytest"])
        .output()
        .expect("run the venv's python");
    assert!(
        probe.status.success(),
        "the venv lacks a package the Python reader needs: run .ci/s3.sh venv\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let out = Command::new(&python)
        .args(["-m", "pytest", "python/tests", "-q", "-p", "no:cacheprovider"])
        .current_dir(root)
        .env("BURROW_BIN", env!("CARGO_BIN_EXE_burrow"))
        .output()
        .expect("run pytest");
    assert!(
        out.status.success(),
        "python/tests failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
