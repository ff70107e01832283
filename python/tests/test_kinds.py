"""Every kind of Cap'n Proto field, unions, groups, enums, big integers,
NaNs, composite keys, several record lists per type, versions reached by
deltas only, a type dropped by a delta and re-created by a reverse delta: what Python reads equals what
`burrow dump --json` reads. The store is written by tests/python.rs
(``BURROW_KINDS_STORE``): run this suite through
``cargo test --all-features --test integration python``."""

import os
import shutil

import pytest

import burrow
from conftest import rust_records, run, to_json


@pytest.fixture
def kinds(tmp_path):
    src = os.environ.get("BURROW_KINDS_STORE")
    if not src or not os.path.isdir(src):
        pytest.fail(
            "BURROW_KINDS_STORE is not set: tests/python.rs writes this store "
            "(cargo test --all-features --test integration python)"
        )
    store = tmp_path / "kinds"
    shutil.copytree(src, store)
    return str(store)


def without_any(view, record):
    """The record's JSON without AnyPointer fields (pycapnp cannot tell a
    struct from a list behind one, which `burrow dump` prints)."""
    for name, field in view.schema.fields.items():
        if field.proto.which() == "slot" and field.proto.slot.type.which() == "anyPointer":
            record.pop(name, None)
    return record


def rust_by_type(store, version, tmp_path, type_name):
    out = run("--store", store, "dump", "--json", "--version", version, "--type", type_name,
              "--cache", tmp_path / f"dump-{type_name}-{version}")
    import json

    return {r["ordinal"]: r["record"] for r in map(json.loads, out.splitlines())}


def check_version(c, store, version, tmp_path, types):
    assert sorted(t.rsplit(":", 1)[-1] for t in c.state.types) == sorted(types), version
    for name in types:
        v = c.view(name)
        rust = rust_by_type(store, version, tmp_path, name)
        got = {o: without_any(v, to_json(r)) for o, r in v.items()}
        rust = {o: without_any(v, r) for o, r in rust.items()}
        assert sorted(got) == sorted(rust), f"{name} at {version}: ordinals"
        for o in rust:
            assert got[o] == rust[o], f"{name} at {version}, ordinal {o}"
        assert len(v) == len(rust)
        for o, rec in v.items():
            key = v.key_of(rec)
            assert v.find_ordinal(key) == o, f"{name} at {version}: find({key!r})"


def test_every_kind_matches_rust(kinds, tmp_path):
    c = burrow.Consumer(kinds, cache_dir=tmp_path / "py-cache")
    assert c.refresh() == 4
    assert [b.name.split("/")[0] for b in c.state._rs.blobs] == ["snapshot"] + ["delta"] * 3
    check_version(c, kinds, 4, tmp_path, ["Every", "Probe"])
    with pytest.raises(burrow.NoSuchType, match="Shelf"):
        c.view("Shelf")
    # Back by a reverse delta that re-creates the dropped type, records
    # and all (its blob carries no schema node for it: the consumer has it
    # from the snapshot).
    run("--store", kinds, "pin", "3")
    assert c.refresh() == 3
    check_version(c, kinds, 3, tmp_path, ["Every", "Probe", "Shelf"])
    assert len(c.view("Shelf")) == 12
    run("--store", kinds, "pin", "1")
    assert c.refresh() == 1
    check_version(c, kinds, 1, tmp_path, ["Every", "Probe", "Shelf"])
    assert c.refresh_to(2) == 2
    check_version(c, kinds, 2, tmp_path, ["Every", "Probe", "Shelf"])


def test_composite_key(kinds, tmp_path):
    c = burrow.Consumer(kinds, cache_dir=tmp_path / "py-cache")
    c.refresh()
    p = c.view("Probe")
    assert p.key_fields == ("name", "small")
    rec = p.find(("probe-3", 0))  # i = 10
    assert rec is not None and rec.name == "probe-3" and rec.small == 0
    assert p.find(("probe-3", 1)) is None
    with pytest.raises(burrow.KeyQueryError, match="out of range for int16"):
        p.find(("probe-3", 40000))
    with pytest.raises(burrow.KeyQueryError, match="expected str"):
        p.find((3, 0))
    with pytest.raises(burrow.KeyQueryError, match="2 field"):
        p.find("probe-3")
