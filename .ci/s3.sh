#!/usr/bin/env bash
# A local S3 server (moto) for burrow's S3 tests. Only ever on 127.0.0.1.
#
#   .ci/s3.sh venv              # only create .ci/.venv: moto[server], and the
#                               # Python reader's packages (python/) and pytest
#   eval "$(.ci/s3.sh start)"   # venv if missing, start moto, print exports
#   .ci/s3.sh stop              # stop the server this script started
#
# `cargo test --all-features` needs only the venv: the S3 tests start their
# own moto servers from it (tests/conformance/moto.rs). `start` is for
# running them against servers that outlive one test run.
#
# `start` creates .ci/.venv (gitignored) with `moto[server]` if it is missing,
# starts two `moto_server`s on free ports in the background, waits (bounded)
# until they answer, and prints `export` lines on stdout:
#
#   BURROW_TEST_S3_ENDPOINT       http://127.0.0.1:<port>: accepts any
#                                 credentials; the tests create their own
#                                 bucket there. Nothing is created on it.
#   BURROW_TEST_S3_AUTH_ENDPOINT  http://127.0.0.1:<port>: checks credentials
#                                 (moto's IAM authentication); holds bucket
#                                 `burrow-auth` and one user allowed s3:*,
#   BURROW_TEST_S3_AUTH_KEY_ID    whose keys these are,
#   BURROW_TEST_S3_AUTH_SECRET
#   BURROW_TEST_S3_AUTH_ROLES     and a user per role of blobstore/iam/, as
#                                 `role:key:secret,...` (the start-up check
#                                 and least-privilege tests use them).
#
# Progress goes to stderr; the servers' logs to .ci/.moto*.log. `stop` kills
# only the pids recorded by `start` (in .ci/.moto.pid).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
pidfile="$here/.moto.pid"
log="$here/.moto.log"
auth_log="$here/.moto-auth.log"
moto_spec="${BURROW_MOTO_SPEC:-moto[server]>=5.1,<6}"
# What the Python reader (python/pyproject.toml, with its s3 extra) and its
# tests (python/tests, run by tests/python.rs) import; keep in step with
# pyproject.toml's dependencies.
python_specs=("pycapnp>=2.0,<3" "xxhash>=3,<4" "zstandard>=0.22" "boto3>=1.28" "pytest>=7")

ensure_venv() {
    if [[ ! -x "$venv/bin/moto_server" ]]; then
        echo "s3.sh: creating $venv with $moto_spec" >&2
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet "$moto_spec" >&2
    fi
    # One import is quick; pip runs only when a package is missing.
    if ! "$venv/bin/python" -c 'import capnp, xxhash, zstandard, boto3, pytest' 2>/dev/null; then
        echo "s3.sh: installing the Python reader's packages into $venv" >&2
        "$venv/bin/pip" install --quiet "${python_specs[@]}" >&2
    fi
}

free_port() {
    "$venv/bin/python" - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# Starts moto on a free port, logging to $1; sets $started_endpoint and
# appends the pid to the pid file. Fails (with the log) if it never answers.
start_one() {
    local log_file="$1" port pid endpoint
    port="$(free_port)"
    endpoint="http://127.0.0.1:$port"
    # moto_server with its key writes serialised (see moto_serial.py).
    "$venv/bin/python" "$here/moto_serial.py" -H 127.0.0.1 -p "$port" >"$log_file" 2>&1 &
    pid=$!
    echo "$pid" >>"$pidfile"
    # Wait until it answers: at most 30 s, then fail with its log.
    for _ in $(seq 1 150); do
        if curl -s -o /dev/null --max-time 1 "$endpoint/moto-api/"; then
            echo "s3.sh: moto is up at $endpoint (pid $pid)" >&2
            started_endpoint="$endpoint"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.2
    done
    echo "s3.sh: moto did not answer at $endpoint; its log:" >&2
    cat "$log_file" >&2
    stop
    exit 1
}

start() {
    ensure_venv
    if [[ -s "$pidfile" ]]; then
        echo "s3.sh: servers started by this script may still run (pids $(tr '\n' ' ' <"$pidfile")); run '$0 stop' first" >&2
        exit 1
    fi
    : >"$pidfile"
    start_one "$log"
    local plain="$started_endpoint"
    start_one "$auth_log"
    local auth="$started_endpoint" keys
    # Create the bucket and a user while authentication is still off, then
    # turn it on for every later request.
    keys="$("$venv/bin/python" "$here/moto_auth_setup.py" "$auth")" || { stop; exit 1; }
    echo "export BURROW_TEST_S3_ENDPOINT=$plain"
    echo "export BURROW_TEST_S3_AUTH_ENDPOINT=$auth"
    local admin roles
    admin="$(head -n 1 <<<"$keys")"
    roles="$(tail -n +2 <<<"$keys" | tr ' ' ':' | paste -sd, -)"
    echo "export BURROW_TEST_S3_AUTH_KEY_ID=${admin%% *}"
    echo "export BURROW_TEST_S3_AUTH_SECRET=${admin#* }"
    echo "export BURROW_TEST_S3_AUTH_ROLES=$roles"
}

stop() {
    if [[ -f "$pidfile" ]]; then
        local pid
        while read -r pid; do
            [[ -n "$pid" ]] || continue
            kill "$pid" 2>/dev/null || true
            echo "s3.sh: stopped moto (pid $pid)" >&2
        done <"$pidfile"
        rm -f "$pidfile"
    fi
}

case "${1:-}" in
    venv) ensure_venv ;;
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 venv|start|stop" >&2
        exit 2
        ;;
esac
