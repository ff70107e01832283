"""S3: a dataset the CLI publishes to a local S3 server (moto, started as
the Rust tests start it, on 127.0.0.1) reads from Python with the same
AWS_* settings, record for record as the Rust consumer reads it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import burrow
from conftest import REPO, demo, rust_records
from test_read import assert_same


@pytest.fixture(scope="module")
def moto():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, ".ci", "moto_serial.py"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto did not start at {endpoint} (is .ci/.venv complete? run .ci/s3.sh venv)")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_env(endpoint, allow_http=True):
    env = dict(os.environ)
    env.update(
        AWS_ENDPOINT=endpoint, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
    )
    env.pop("AWS_ENDPOINT_URL", None)
    if allow_http:
        env["AWS_ALLOW_HTTP"] = "true"
    else:
        env.pop("AWS_ALLOW_HTTP", None)
    return env


def test_s3_store_matches_rust(moto, tmp_path, monkeypatch):
    import boto3

    bucket = f"py-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    boto3.client(
        "s3", endpoint_url=moto, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    env = s3_env(moto)
    store = f"s3://{bucket}/movies"
    demo(tmp_path, records=400, cycles=3, env=env, store=store)
    for k, v in env.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    assert c.refresh() == 3
    assert_same(c.view("Movie"), rust_records(store, 3, tmp_path, env=env), "s3 version 3")
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(burrow.ConfigError, match="AWS_ALLOW_HTTP=true"):
        burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    with pytest.raises(burrow.NotFound, match="snapshot/"):
        burrow.Consumer(store, cache_dir=tmp_path / "c2").store.get(f"snapshot/{9:020d}")
