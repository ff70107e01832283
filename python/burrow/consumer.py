"""Following a dataset: the consumer (the Rust owner is ``consumer/``).

:meth:`Consumer.refresh` reads the announcement log's newest entry, takes
its target (the pinned version if a pin is active, else the newest
announced), plans the cheapest path of announced blobs from where the
consumer is (forward deltas, reverse deltas back to a pin, or the nearest
snapshot at or below the target and the deltas after it, by the sizes the
entries give, as ``consumer/plan.rs`` does), fetches each blob into the
cache (undoing zstd, checking the envelope, the body checksum, the kind
and versions the plan expects and the dataset id of the log), and applies
it. A blob that is missing or refused is avoided and the plan made again
(at most three times); when no path is left, the blob's own error is
raised, and the consumer keeps the state it had.

The cache holds raw blobs, one file each, under
``<cache_dir>/<dataset id>/`` named like the object with ``/`` as ``-``
(FORMAT.md, "Object names"): the layout of the Rust consumer's cache. A
cached file is written under a temporary name and renamed once checked,
never rewritten; a file this consumer did not write is checked (checksum)
when it first opens it, and fetched again if it fails. A stored object is read
whole into memory before it is checked and written (the Rust consumer
streams it); the records are then read from the map.

A :class:`Consumer` is for one thread at a time (``refresh`` replaces its
state); a :class:`State` and its views are immutable and may be read from
any thread, and keep reading their version after a refresh, their blobs
mapped, for as long as they are held.
"""

import os
import tempfile

from . import envelope
from .blob import OpenBlob
from .errors import (
    BurrowError, CorruptBlob, DatasetMismatch, Incompatible, KeyQueryError, NoPath,
    NoSuchType, NotFound, NotReady, SchemaError,
)
from .key import KeySpec
from .log import AnnouncementLog
from .state import ReadState, find_key
from .store import cache_file_name, delta_name, open_store, reverse_name, snapshot_name

DEFAULT_MAX_BLOB_BYTES = 1 << 40
_BAD_BLOB = (CorruptBlob, NotFound, Incompatible, DatasetMismatch, SchemaError)


def _loader():
    import capnp

    return capnp.SchemaLoader()


class State:
    """The records of one version: what a :class:`Consumer` serves, or
    what :func:`read_files` reads from blob files. Immutable: a view of it
    stays valid (and its blobs mapped) for as long as it is held."""

    def __init__(self, read_state, loader):
        self._rs = read_state
        self._loader = loader
        self._specs = {}

    @property
    def version(self):
        return self._rs.version

    @property
    def dataset_id(self):
        """The dataset's id, 32 hex digits as ``burrow versions`` shows it."""
        return self._rs.dataset_id

    @property
    def types(self):
        """The full names of the types this version holds."""
        return [t.name for t in self._rs.types]

    def view(self, name):
        """The records of one type, by its full name
        (``examples/movies.capnp:Movie``) or its short name (``Movie``)."""
        found = self._rs.find_types(name)
        if len(found) != 1:
            have = ", ".join(t.name for t in self._rs.types) or "none"
            what = "names several types" if found else "is not a type of this version"
            raise NoSuchType(f"{name!r} {what} (version {self.version} has: {have})")
        t = found[0]
        return View(t, self._spec(t), self._loader, self.version)

    def _spec(self, t):
        if not t.key_fields:
            return None
        if t.type_id not in self._specs:
            try:
                schema = self._loader.get(t.type_id).as_struct()
            except Exception:
                raise SchemaError(f"{t.name}: no schema node for type {t.type_id:#x}") from None
            self._specs[t.type_id] = KeySpec(t.name, schema, t.key_fields, self._loader)
        return self._specs[t.type_id]


class View:
    """One type's records at one version, as pycapnp readers of the
    dataset's own schema (from the schema nodes in the blobs' headers)."""

    def __init__(self, t, spec, loader, version):
        self._t = t
        self._spec = spec
        self._loader = loader
        self.version = version

    @property
    def name(self):
        return self._t.name

    @property
    def key_fields(self):
        return self._t.key_fields

    @property
    def ordinal_limit(self):
        return self._t.ordinal_limit

    @property
    def schema(self):
        """The record struct's pycapnp schema."""
        return self._loader.get(self._t.type_id).as_struct()

    def __len__(self):
        return self._t.record_count

    def __repr__(self):
        return f"<burrow.View {self.name} v{self.version}: {len(self)} records>"

    def get(self, ordinal):
        """The record at ``ordinal``, or ``None`` for a free ordinal."""
        return self._t.get(ordinal)

    def find_ordinal(self, key):
        """The ordinal of the record with primary key ``key`` (a value, or a
        tuple in key order for a composite key), or ``None``."""
        found = self._find(key)
        return None if found is None else found[0]

    def _find(self, key):
        spec = self._spec
        if spec is None:
            raise KeyQueryError(f"{self.name} has no primary key")
        return find_key(self._t, spec, spec.encode_query(key), key)

    def find(self, key):
        """The record with primary key ``key``, or ``None``."""
        found = self._find(key)
        return None if found is None else found[1]

    def __contains__(self, key):
        return self.find_ordinal(key) is not None

    def ordinals(self):
        return self._t.ordinals()

    def items(self):
        """(ordinal, record) for every record, in ordinal order."""
        get = self._t.get
        for o in self._t.ordinals():
            yield o, get(o)

    def __iter__(self):
        get = self._t.get
        for o in self._t.ordinals():
            yield get(o)

    def key_of(self, record):
        """A record's primary key, as :meth:`find` takes it."""
        if self._spec is None:
            raise KeyQueryError(f"{self.name} has no primary key")
        return self._spec.value(record)

    def to_records(self):
        """Every record as a plain dict (pycapnp's ``to_dict``: enums as
        names, Data as bytes, unions as their active member), in ordinal
        order: ``pandas.DataFrame(view.to_records())``."""
        return [r.to_dict() for r in self]


def read_files(snapshot, *deltas):
    """A :class:`State` from blob files (raw or zstd, as a store or a cache
    holds them): a snapshot, then deltas applied in order. Every file's
    checksum is checked."""
    loader = _loader()
    tmp = tempfile.mkdtemp(prefix="burrow-read-")
    paths = [snapshot, *deltas]
    blobs = []
    for p in paths:
        name = os.path.basename(os.fspath(p))
        with open(p, "rb") as f:
            raw = envelope.decode_stored(f.read(), name, DEFAULT_MAX_BLOB_BYTES)
        local = os.path.join(tmp, f"{len(blobs)}-{name}")
        with open(local, "wb") as f:
            f.write(raw)
        blobs.append(OpenBlob(local, name, loader, verify=True))
        os.unlink(local)  # the map keeps the bytes while the state lives
    os.rmdir(tmp)
    first = blobs[0]
    rs = ReadState.from_snapshot(first, first.env.to_version)
    for b in blobs[1:]:
        rs = rs.apply(b, b.env.from_version, b.env.to_version)
    return State(rs, loader)


class Consumer:
    """Follows the dataset in ``store`` (a directory, ``file://`` or
    ``s3://bucket/prefix`` URL, or a store object), keeping blobs in
    ``cache_dir``. Holds no state until :meth:`refresh`."""

    def __init__(self, store, cache_dir, max_blob_bytes=DEFAULT_MAX_BLOB_BYTES):
        self.store = open_store(store)
        self.cache_dir = os.fspath(cache_dir)
        self.max_blob_bytes = max_blob_bytes
        self.log = AnnouncementLog(self.store)
        self._loader = _loader()
        self._state = None
        self._checked = set()

    @property
    def version(self):
        """The version served, or ``None`` before the first refresh that
        found one."""
        return None if self._state is None else self._state.version

    @property
    def state(self):
        if self._state is None:
            raise NotReady(f"{self.store.display}: no version loaded yet (call refresh())")
        return self._state

    @property
    def dataset_id(self):
        return self.state.dataset_id

    def view(self, name):
        """The current version's records of one type (see :meth:`State.view`)."""
        return self.state.view(name)

    def refresh(self):
        """Moves to the announced (or pinned) version; returns the version
        served, ``None`` if nothing was announced yet."""
        newest = self.log.latest()
        if newest is None:
            return self.version
        return self._move(newest, newest.target)

    def refresh_to(self, version):
        """Moves to an announced ``version`` (ignoring any pin)."""
        newest = self.log.latest()
        if newest is None:
            raise NoPath(f"{self.store.display}: nothing was announced")
        return self._move(newest, version)

    def _move(self, newest, version):
        if self.version == version:
            return version
        target = self.log.find_version(newest, version)
        if target is None:
            raise NoPath(f"{self.store.display}: version {version} was never announced")
        failed = set()
        last = None
        for _ in range(4):
            steps = self._plan(newest, target, failed)
            if steps is None:
                break
            try:
                self._state = self._apply(steps, target.dataset_id)
                return self.version
            except _BAD_BLOB as e:
                failed.add(e.blob if hasattr(e, "blob") else getattr(e, "name", None))
                last = e
        if last is not None:
            raise last
        raise NoPath(f"{self.store.display}: no usable path of blobs reaches version {version}")

    def _plan(self, newest, target, failed):
        """The cheapest list of steps to ``target`` avoiding ``failed``
        blobs: ('snapshot', v), ('delta', a, b), ('reverse', b, a)."""
        best = None

        def consider(steps, cost):
            nonlocal best
            if any(_step_name(s) in failed for s in steps):
                return
            if best is None or cost < best[1]:
                best = (steps, cost)

        t = target.version
        cur = self.version
        if cur is not None and self._state.dataset_id == target.dataset_id:
            if cur == t:
                return []
            if cur < t:
                chain = self.log.chain_to(target, cur)
                if chain:
                    consider(
                        [("delta", a.version, b.version) for a, b in zip(chain, chain[1:])],
                        sum(e.delta_bytes for e in chain[1:]),
                    )
            else:
                head = self.log.find_version(newest, cur)
                chain = self.log.chain_to(head, t) if head else None
                if chain:
                    consider(
                        [("reverse", b.version, a.version) for a, b in reversed(list(zip(chain, chain[1:])))],
                        sum(e.reverse_bytes for e in chain[1:]),
                    )
        chain = self.log.chain_to(target, target.snapshot_version)
        for _ in range(3):
            if not chain:
                break
            first = chain[0]
            if first.has_snapshot:
                steps = [("snapshot", first.version)]
                steps += [("delta", a.version, b.version) for a, b in zip(chain, chain[1:])]
                consider(steps, first.snapshot_bytes + sum(e.delta_bytes for e in chain[1:]))
                if snapshot_name(first.version) not in failed:
                    break
            if first.from_version == 0:
                break
            prev = self.log.find_version(newest, first.from_version)
            older = self.log.chain_to(prev, prev.snapshot_version) if prev else None
            if not older:
                break
            chain = older + chain[1:] if older[-1] == first else older + chain
            chain = _dedup(chain)
        return None if best is None else best[0]

    def _apply(self, steps, dataset_id):
        if not steps:
            return self._state
        state = self._state._rs if self._state is not None and steps and steps[0][0] != "snapshot" else None
        for step in steps:
            blob = self._open(step, dataset_id)
            if step[0] == "snapshot":
                state = ReadState.from_snapshot(blob, step[1])
            else:
                state = state.apply(blob, step[1], step[2])
        return State(state, self._loader)

    def _open(self, step, dataset_id):
        name = _step_name(step)
        kind = {"snapshot": 1, "delta": 2, "reverse": 3}[step[0]]
        versions = (0, step[1]) if kind == 1 else (step[1], step[2])
        folder = os.path.join(self.cache_dir, dataset_id)
        path = os.path.join(folder, cache_file_name(name))
        if os.path.exists(path):
            try:
                blob = OpenBlob(path, name, self._loader, verify=path not in self._checked)
                self._checked.add(path)
                _expect(blob.env, name, kind, versions)
                blob.check_dataset(dataset_id)
                return blob
            except (CorruptBlob, Incompatible, DatasetMismatch):
                os.unlink(path)  # a bad cache file: fetch the blob again
        raw = envelope.decode_stored(self.store.get(name), name, self.max_blob_bytes)
        env = envelope.decode(raw, name)
        _expect(env, name, kind, versions)
        envelope.verify_body(env, raw, name)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetch-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._checked.add(path)
        blob = OpenBlob(path, name, self._loader, verify=False)
        blob.check_dataset(dataset_id)
        return blob


def _expect(env, name, kind, versions):
    if env.kind != kind or (env.from_version, env.to_version) != versions:
        raise CorruptBlob(
            name,
            f"holds a {env.kind_name} {env.from_version} -> {env.to_version}, the name says "
            f"{envelope.KINDS[kind]} {versions[0]} -> {versions[1]}",
        )


def _dedup(chain):
    out = []
    for e in chain:
        if not out or out[-1].version != e.version:
            out.append(e)
    return out


def _step_name(step):
    if step[0] == "snapshot":
        return snapshot_name(step[1])
    if step[0] == "delta":
        return delta_name(step[1], step[2])
    return reverse_name(step[1], step[2])
