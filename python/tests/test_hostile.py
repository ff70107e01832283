"""Bad store content is refused by a named error saying what and where,
never read as records, and a consumer that meets it keeps the state it
had."""

import os
import shutil

import pytest

import burrow
from conftest import demo, run


def one_version(tmp_path, compression="none"):
    store = demo(tmp_path, records=200, cycles=1, compression=compression)
    return store, os.path.join(store, "snapshot", f"{1:020d}")


def refresh_fails(store, tmp_path, error, words):
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    with pytest.raises(error) as e:
        c.refresh()
    assert words in str(e.value), str(e.value)
    assert c.version is None
    return e.value


def rewrite(path, change):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data = change(data)
    with open(path, "wb") as f:
        f.write(data)


def test_truncated_blob(tmp_path):
    store, snap = one_version(tmp_path)
    rewrite(snap, lambda d: d[: len(d) - 40])
    e = refresh_fails(store, tmp_path, burrow.CorruptBlob, "envelope says")
    assert e.blob == f"snapshot/{1:020d}"


def test_flipped_body_byte(tmp_path):
    store, snap = one_version(tmp_path)

    def flip(d):
        d[len(d) // 2] ^= 0x10
        return d

    rewrite(snap, flip)
    refresh_fails(store, tmp_path, burrow.CorruptBlob, "body checksum mismatch")


def test_flipped_byte_in_compressed_blob(tmp_path):
    store, snap = one_version(tmp_path, compression="zstd:3")

    def flip(d):
        d[len(d) // 2] ^= 0x01
        return d

    rewrite(snap, flip)
    e = refresh_fails(store, tmp_path, burrow.CorruptBlob, "snapshot/")
    assert "zstd" in e.reason or "checksum" in e.reason, e.reason


def test_wrong_magic(tmp_path):
    store, snap = one_version(tmp_path)
    rewrite(snap, lambda d: b"NOTBURRO" + d[8:])
    refresh_fails(store, tmp_path, burrow.CorruptBlob, "neither a blob nor a zstd frame")


def test_newer_format_version(tmp_path):
    store, snap = one_version(tmp_path)

    def bump(d):
        d[8] = 3
        return d

    rewrite(snap, bump)
    refresh_fails(store, tmp_path, burrow.Incompatible, "format version 3 is not supported")


def test_entry_naming_a_missing_blob(tmp_path):
    store, snap = one_version(tmp_path)
    os.remove(snap)
    e = refresh_fails(store, tmp_path, burrow.NotFound, f"snapshot/{1:020d}")
    assert isinstance(e, burrow.StoreError)


def test_corrupt_announcement(tmp_path):
    store, _ = one_version(tmp_path)
    entry = os.path.join(store, "announce", f"{1:020d}")

    def flip(d):
        d[-3] ^= 0xFF
        return d

    rewrite(entry, flip)
    e = refresh_fails(store, tmp_path, burrow.CorruptBlob, "announce/")
    assert "checksum" in e.reason


def test_bad_version_keeps_the_state(tmp_path):
    """A consumer whose next version is refused keeps serving the one it had."""
    store = demo(tmp_path, records=200, cycles=2, compression="none")
    run("--store", store, "pin", "1")
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    assert c.refresh() == 1
    before = [r.id for r in c.view("Movie")]
    run("--store", store, "unpin")
    for name in (f"delta/{1:020d}-{2:020d}", f"snapshot/{2:020d}"):
        rewrite(os.path.join(store, *name.split("/")), lambda d: d[:100])
    with pytest.raises(burrow.CorruptBlob):
        c.refresh()
    assert c.version == 1 and [r.id for r in c.view("Movie")] == before


def test_corrupt_cache_file_is_fetched_again(tmp_path):
    store, _ = one_version(tmp_path)
    c = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    c.refresh()
    want = [r.id for r in c.view("Movie")]
    (cached,) = [p for p in (tmp_path / "py-cache").rglob("snapshot-*")]
    rewrite(cached, lambda d: d[:-8] + b"\xff" * 8)
    c2 = burrow.Consumer(store, cache_dir=tmp_path / "py-cache")
    assert c2.refresh() == 1 and [r.id for r in c2.view("Movie")] == want


def test_blob_of_another_dataset(tmp_path):
    """A snapshot copied in from another dataset under the right name."""
    store, snap = one_version(tmp_path)
    other = demo(tmp_path, records=200, cycles=1, compression="none", name="other")
    shutil.copy(os.path.join(other, "snapshot", f"{1:020d}"), snap)
    refresh_fails(store, tmp_path, burrow.DatasetMismatch, "belongs to dataset")


def test_store_that_is_not_there(tmp_path):
    with pytest.raises(burrow.ConfigError, match="no such directory"):
        burrow.Consumer(tmp_path / "nope", cache_dir=tmp_path / "c")
    c = burrow.Consumer(tmp_path, cache_dir=tmp_path / "c")
    assert c.refresh() is None
    with pytest.raises(burrow.NotReady):
        c.view("Movie")
