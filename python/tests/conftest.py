"""Fixtures: stores written by the real burrow binary (``BURROW_BIN``, set
by tests/python.rs to the binary cargo built), and what the Rust consumer
reads from them (``burrow dump --json``)."""

import base64
import json
import math
import os
import struct
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def burrow_bin():
    path = os.environ.get("BURROW_BIN")
    if not path or not os.path.exists(path):
        pytest.fail(
            "BURROW_BIN must name the burrow binary (tests/python.rs sets it; "
            "`cargo build` makes target/debug/burrow)"
        )
    return path


def run(*args, env=None):
    out = subprocess.run(
        [burrow_bin(), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )
    if out.returncode != 0:
        raise AssertionError(f"burrow {' '.join(map(str, args))} failed:\n{out.stderr}")
    return out.stdout


def demo(tmp_path, records=1500, cycles=4, compression="zstd:3", name="data", env=None, store=None):
    """A store of the Movie workload: ``cycles`` versions, each after the
    first changing 10% of records and removing and adding 5% of keys."""
    store = store or str(tmp_path / name)
    run(
        "demo", "--records", records, "--cycles", cycles, "--store", store,
        "--cache", tmp_path / f"{name}-rust-cache", "--change", "0.1", "--churn", "0.05",
        "--compression", compression, "--no-gc", env=env,
    )
    return store


def rust_records(store, version, tmp_path, env=None):
    """What the Rust consumer reads at ``version``: ordinal -> record JSON."""
    out = run(
        "--store", store, "dump", "--json", "--version", version,
        "--cache", tmp_path / f"dump-cache-{version}", env=env,
    )
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {r["ordinal"]: r for r in rows}


def _f32_text(v):
    for digits in range(1, 10):
        text = f"{v:.{digits}g}"
        if struct.pack("<f", float(text)) == struct.pack("<f", v):
            return float(text)
    return v


def to_json(value, ty=None):  # ty: the value's schema Type, where known
    """A pycapnp value in the JSON mapping `burrow dump` uses
    (schema/dynamic/mod.rs): big integers as strings, Data as base64,
    enums by name, unions as their active member."""
    if type(value).__name__ == "_DynamicStructReader":
        out = {}
        schema = value.schema
        active = None
        if schema.union_fields:
            try:
                active = str(value.which)
            except Exception:
                active = None
        for name, field in schema.fields.items():
            if field.proto.discriminantValue != 0xFFFF and name != active:
                continue
            kind = field.proto.which()
            slot_ty = field.proto.slot.type.which() if kind == "slot" else None
            if slot_ty == "anyPointer":
                continue  # pycapnp cannot tell a struct from a list behind it
            if (
                slot_ty == "struct"
                and not value._has(name)
                and not field.proto.slot.hadExplicitDefault
            ):
                out[name] = None  # dump's null struct (no default to read)
                continue
            out[name] = to_json(getattr(value, name), field.proto.slot.type if slot_ty else None)
        return out
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) <= 1 << 53 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return _f32_text(value) if ty is not None and ty.which() == "float32" else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, str):
        return value
    if hasattr(value, "raw"):
        return str(value)
    elem = ty.list.elementType if ty is not None and ty.which() == "list" else None
    return [to_json(v, elem) for v in value]


@pytest.fixture
def bin_path():
    return burrow_bin()
