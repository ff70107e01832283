"""The Python reader reads what the Rust consumer reads: every record, at
a snapshot, after forward deltas, after reverse deltas to a pin, by
ordinal, by key and by iteration."""

import os

import pytest

import burrow
from conftest import REPO, demo, run, rust_records, to_json


def assert_same(view, rust, where):
    """Every record Python reads equals Rust's, ordinal for ordinal."""
    assert len(view) == len(rust), where
    seen = {}
    for o, rec in view.items():
        seen[o] = to_json(rec)
    assert sorted(seen) == sorted(rust), f"{where}: ordinals differ"
    for o, row in rust.items():
        assert seen[o] == row["record"], f"{where}: ordinal {o}"
        assert to_json(view.get(o)) == row["record"], f"{where}: get({o})"
        key = int(row["key"])
        assert view.find_ordinal(key) == o, f"{where}: find({key})"
        assert to_json(view.find(key)) == row["record"], f"{where}: find({key})"


def blob_names(consumer):
    return [b.name.split("/")[0] for b in consumer.state._rs.blobs]


def test_snapshot_matches_rust(tmp_path):
    store = demo(tmp_path)
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    assert c.version is None
    assert c.refresh() == 4
    assert c.version == 4
    assert blob_names(c) == ["snapshot"]
    v = c.view("Movie")
    assert v is not None and v.name == "examples/movies.capnp:Movie"
    assert v.key_fields == ("id",)
    assert_same(v, rust_records(store, 4, tmp_path), "snapshot 4")
    # Keys that are not there, and ordinals past the end or free.
    assert v.find(10**9) is None and v.get(v.ordinal_limit) is None and v.get(-1) is None
    assert 10**9 not in v
    # A refresh with nothing new keeps the state.
    assert c.refresh() == 4
    # A second consumer on the same cache reads the files it finds there.
    c2 = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    assert c2.refresh() == 4 and len(c2.view("Movie")) == len(v)


def test_deltas_and_pins_match_rust(tmp_path):
    store = demo(tmp_path, compression="none")
    rust = {v: rust_records(store, v, tmp_path) for v in (1, 2, 3, 4)}
    run("--store", store, "pin", "1")
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    assert c.refresh() == 1, "a pin holds consumers at its version"
    assert_same(c.view("Movie"), rust[1], "pinned at 1")
    held = c.view("Movie")
    run("--store", store, "unpin")
    assert c.refresh() == 4
    assert blob_names(c) == ["snapshot", "delta", "delta", "delta"]
    assert_same(c.view("Movie"), rust[4], "snapshot 1 + deltas to 4")
    # A view taken before keeps reading its own version.
    assert_same(held, rust[1], "view held across refresh")
    # Back to a pin: reverse deltas.
    run("--store", store, "pin", "2")
    assert c.refresh() == 2
    assert blob_names(c)[-2:] == ["reverse", "reverse"]
    assert_same(c.view("Movie"), rust[2], "reverse deltas to 2")
    assert c.refresh_to(3) == 3
    assert_same(c.view("Movie"), rust[3], "forward again to 3")


def test_iteration_and_export(tmp_path):
    store = demo(tmp_path, records=300, cycles=2)
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    c.refresh()
    v = c.view("examples/movies.capnp:Movie")
    records = v.to_records()
    assert len(records) == len(v) == sum(1 for _ in v)
    assert [r["id"] for r in records] == [r.id for r in v]
    assert set(records[0]) == {"id", "title", "year", "tags"}
    assert v.key_of(v.get(0)) == records[0]["id"]


def test_golden_blobs(tmp_path):
    """The committed format v2 golden files read: a snapshot of five movies,
    the delta that changes movie 1, removes 3 and adds 7, its reverse."""
    d = os.path.join(REPO, "tests", "data", "v2")
    s1 = burrow.read_files(os.path.join(d, "snapshot-1.blob"))
    assert s1.version == 1 and s1.dataset_id == "601de4f11e5b00010000000000000042"
    v1 = {r.id: to_json(r) for r in s1.view("Movie")}
    assert sorted(v1) == [0, 1, 2, 3, 4]
    s2 = burrow.read_files(os.path.join(d, "snapshot-1.blob"), os.path.join(d, "delta-1-2.blob"))
    v2 = {r.id: to_json(r) for r in s2.view("Movie")}
    assert sorted(v2) == [0, 1, 2, 4, 7]
    assert v2[1] != v1[1] and all(v2[i] == v1[i] for i in (0, 2, 4))
    assert s2.view("Movie").find(3) is None and s2.view("Movie").find(7).id == 7
    back = burrow.read_files(
        os.path.join(d, "snapshot-1.blob"),
        os.path.join(d, "delta-1-2.blob"),
        os.path.join(d, "reverse-2-1.blob"),
    )
    assert {r.id: to_json(r) for r in back.view("Movie")} == v1
    old = burrow.read_files(os.path.join(d, "snapshot-1-before-indexes.blob"))
    assert {r.id: to_json(r) for r in old.view("Movie")} == v1


def test_key_queries_are_checked(tmp_path):
    store = demo(tmp_path, records=50, cycles=1)
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    c.refresh()
    v = c.view("Movie")
    for bad, words in [("7", "expected an integer"), (-1, "out of range"),
                       (1 << 64, "out of range"), ((1, 2), "the key has 1 field")]:
        with pytest.raises(burrow.KeyQueryError, match=words):
            v.find(bad)
    with pytest.raises(burrow.NoSuchType, match="Nope"):
        c.view("Nope")


def test_schema_copy_is_current():
    """python/burrow/burrow.capnp is schema/burrow.capnp."""
    with open(os.path.join(REPO, "schema", "burrow.capnp"), "rb") as a, open(
        os.path.join(REPO, "python", "burrow", "burrow.capnp"), "rb"
    ) as b:
        assert a.read() == b.read(), "copy schema/burrow.capnp to python/burrow/burrow.capnp"


def test_records_are_read_in_place(tmp_path):
    """A record reader points into the mapped cache file: the map cannot be
    closed while the reader (which holds the buffer pycapnp reads from)
    lives, and the cache file is the raw blob."""
    store = demo(tmp_path, records=100, cycles=1)
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    c.refresh()
    rec = c.view("Movie").get(0)
    (blob,) = c.state._rs.blobs
    with pytest.raises(BufferError):
        blob._map.close()
    assert rec.id == 0
    (cached,) = (tmp_path / "py-cache" / c.dataset_id).iterdir()
    assert cached.name == f"snapshot-{1:020d}"
    assert cached.read_bytes()[:8] == b"BURROW\r\n"


def test_module_entry_point(tmp_path):
    import subprocess
    import sys

    store = demo(tmp_path, records=100, cycles=2)
    out = subprocess.run(
        [sys.executable, "-m", "burrow", store, str(tmp_path / "py-cache")],
        capture_output=True, text=True, cwd=os.path.join(REPO, "python"), timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "version 2 of dataset" in out.stdout and "examples/movies.capnp:Movie: 100 records" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "burrow", str(tmp_path / "nope")],
        capture_output=True, text=True, cwd=os.path.join(REPO, "python"), timeout=60,
    )
    assert bad.returncode == 1 and "no such directory" in bad.stderr
