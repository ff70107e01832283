"""One blob opened for reading: mapped from a cache file, its envelope and
body checked, its skeleton read (schema/FORMAT.md; the Rust owner is
``schema/blob/read.rs``).

The body is read in place. pycapnp reads a message from any buffer without
copying (``from_segments`` on a ``memoryview`` of the ``mmap``, aligned:
the body starts at byte 64 of a page-aligned map), so record readers
point into the mapped file, and the map stays open for as long as any
reader of it lives. The traversal limit is raised to 2^62 words: pycapnp
counts words read over a message's whole life, and a mapped state is read
for as long as it serves (the Rust reader has none for the same reason).
What bounds a walk is the blob's checked shape and Cap'n Proto's own
bounds checks on every pointer; this reader does not repeat the Rust
layout proof (``check.rs``), whose blobs it reads after their checksum
proves them to be what the producer, which runs that proof, wrote.
"""

import mmap
import os

from . import envelope, wire
from ._capnp import KjException, ListSchema, burrow, pointer_offset, records_struct
from .errors import CorruptBlob, DatasetMismatch, SchemaError

TRAVERSAL_LIMIT = 1 << 62
NESTING_LIMIT = 128
MAX_TYPES = 4096

_SNAP_PRESENT = pointer_offset(burrow.TypeSnapshot, "present")
_SNAP_KEY_INDEX = pointer_offset(burrow.TypeSnapshot, "keyIndex")
_DELTA_LISTS = {
    "removed": (pointer_offset(burrow.TypeDelta, "removed"), "I"),
    "removed_hashes": (pointer_offset(burrow.TypeDelta, "removedKeyHashes"), "Q"),
    "ordinals": (pointer_offset(burrow.TypeDelta, "ordinals"), "I"),
    "key_hashes": (pointer_offset(burrow.TypeDelta, "keyHashes"), "Q"),
}


def dataset_hex(hi, lo):
    return f"{hi:016x}{lo:016x}"


class Section:
    """One type's entry in a snapshot or delta, with its record lists."""

    def element(self, i):
        return self.lists[i >> self.shift][i & self.mask]


class OpenBlob:
    """A snapshot or delta blob read from ``path`` (raw, as a cache holds
    it). ``verify`` checks the body's checksum (a file this process did not
    fetch); ``loader`` is the ``capnp.SchemaLoader`` the blob's schema
    nodes go into."""

    def __init__(self, path, name, loader, verify=True):
        self.name = name
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise CorruptBlob(name, "0 bytes, shorter than the 64-byte envelope")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CorruptBlob(name, f"cannot map {path}: {e}") from None
        data = memoryview(self._map)
        self.env = envelope.decode(data, name)
        if self.env.kind not in (1, 2, 3):
            raise CorruptBlob(name, f"expected a snapshot or delta, found an {self.env.kind_name}")
        if verify:
            envelope.verify_body(self.env, data, name)
        words = self.env.body_len // 8
        if words < 2:
            raise CorruptBlob(name, "the body is not one segment filling it")
        table = data[64:72].cast("I")
        if table[0] != 0 or table[1] != words - 1:
            raise CorruptBlob(name, "the body is not one segment filling it")
        self.seg = wire.Segment(data[72:], name)
        root_type = burrow.Snapshot if self.env.kind == 1 else burrow.Delta
        try:
            self.root = root_type.from_segments(
                [self.seg.bytes],
                traversal_limit_in_words=TRAVERSAL_LIMIT,
                nesting_limit=NESTING_LIMIT,
            )
            self._read_header(loader)
        except KjException as e:
            raise CorruptBlob(name, f"skeleton: {_kj(e)}") from None

    def _read_header(self, loader):
        h = self.root.header
        env = self.env
        if (h.fromVersion, h.toVersion) != (env.from_version, env.to_version):
            raise CorruptBlob(
                self.name,
                f"header says {h.fromVersion} -> {h.toVersion}, the envelope "
                f"{env.from_version} -> {env.to_version}",
            )
        if h.datasetIdHi == 0 and h.datasetIdLo == 0:
            raise CorruptBlob(self.name, "the header has no dataset identity")
        self.dataset_id = dataset_hex(h.datasetIdHi, h.datasetIdLo)
        self.schema_hash = h.schemaHash
        self.node_sizes = {}
        for node in h.nodes:
            try:
                loader.load_dynamic(node)
            except KjException as e:
                raise SchemaError(f"{self.name}: schema node {node.id:#x}: {_kj(e)}") from None
            if node.which() == "struct":
                self.node_sizes[node.id] = (node.struct.dataWordCount, node.struct.pointerCount)
        self.loader = loader

    def check_dataset(self, expected):
        if self.dataset_id != expected:
            raise DatasetMismatch(self.name, expected, self.dataset_id)

    def _lists(self, type_id, name, slot, shift, length):
        wire.record_lists(self.seg, name, slot, shift, length, self.node_sizes.get(type_id))
        if length == 0:
            return []
        try:
            schema = self.loader.get(type_id).as_struct()
        except KjException:
            raise SchemaError(
                f"{self.name}: {name}: no schema node for type {type_id:#x} in this blob "
                "or any read before it"
            ) from None
        records = self.root.records.as_struct(records_struct(slot + 1))
        outer = getattr(records, f"p{slot}").as_list(ListSchema(ListSchema(schema)))
        return [outer[k] for k in range(len(outer))]

    def _section(self, index, t):
        s = Section()
        s.index = index
        s.type_id = t.typeId
        s.name = t.name
        s.key_fields = tuple(t.keyFields)
        s.slot = t.recordsSlot
        s.shift = t.listShift
        s.mask = (1 << min(s.shift, wire.MAX_LIST_SHIFT)) - 1
        s.blob = self
        return s

    def _entries(self):
        types = self.root.types
        if len(types) > MAX_TYPES:
            raise CorruptBlob(self.name, f"{len(types)} types, more than {MAX_TYPES}")
        return types

    def snapshot_sections(self):
        """Each type's :class:`Section`: its counts, presence bitmap and key
        index (``memoryview`` of the map), record lists."""
        out, slots = [], set()
        try:
            for i, t in enumerate(self._entries()):
                s = self._section(i, t)
                s.record_count, s.ordinal_limit = t.recordCount, t.ordinalLimit
                at, _ = wire.entry_pointers(self.seg, 1, i)
                s.present = self.seg.scalars(at + _SNAP_PRESENT, wire.SIZE_BYTE8, "Q", "present")
                s.key_index = self.seg.scalars(
                    at + _SNAP_KEY_INDEX, wire.SIZE_BYTE8, "Q", "key index"
                )
                self._check_snapshot(s, slots)
                s.lists = self._lists(s.type_id, s.name, s.slot, s.shift, s.ordinal_limit)
                out.append(s)
        except KjException as e:
            raise CorruptBlob(self.name, f"type entries: {_kj(e)}") from None
        return out

    def _check_snapshot(self, s, slots):
        def bad(reason):
            return CorruptBlob(self.name, f"{s.name}: {reason}")

        limit, count = s.ordinal_limit, s.record_count
        if s.present and len(s.present) != -(-limit // 64):
            raise bad(f"presence bitmap has {len(s.present)} words for {limit} ordinals")
        if count > limit or (not s.present and count != limit):
            raise bad(f"{count} records in {limit} ordinals")
        if s.present:
            marked = sum(w.bit_count() for w in s.present)
            if limit % 64 and s.present[-1] >> (limit % 64):
                raise bad(f"presence bitmap marks an ordinal past the ordinal limit {limit}")
            if marked != count:
                raise bad(f"presence bitmap marks {marked} ordinals, but the record count is {count}")
        if s.key_fields and count and len(s.key_index) <= count:
            raise bad(f"key index has {len(s.key_index)} slots for {count} records")
        if s.slot in slots:
            raise bad(f"records slot {s.slot} used twice")
        slots.add(s.slot)

    def delta_sections(self):
        """Each type's :class:`Section` of a delta: ``removed``,
        ``removed_hashes``, ``ordinals``, ``key_hashes`` (``memoryview``),
        the counts after, ``dropped``, record lists."""
        out, seen, slots = [], set(), set()
        try:
            for i, t in enumerate(self._entries()):
                s = self._section(i, t)
                at, _ = wire.entry_pointers(self.seg, 1, i)
                for attr, (off, fmt) in _DELTA_LISTS.items():
                    size = wire.SIZE_BYTE8 if fmt == "Q" else wire.SIZE_BYTE4
                    setattr(s, attr, self.seg.scalars(at + off, size, fmt, attr))
                s.record_count_after = t.recordCountAfter
                s.ordinal_limit_after = t.ordinalLimitAfter
                s.dropped = t.dropped
                n = len(s.ordinals)
                if s.type_id in seen:
                    raise CorruptBlob(self.name, f"{s.name}: the type appears twice in one delta")
                seen.add(s.type_id)
                if s.dropped and (
                    len(s.removed) or n or s.record_count_after or s.ordinal_limit_after
                ):
                    raise CorruptBlob(
                        self.name, f"{s.name}: drops the type and also changes its records"
                    )
                if len(s.removed) != len(s.removed_hashes) or len(s.key_hashes) != n:
                    raise CorruptBlob(self.name, f"{s.name}: delta lists disagree in length")
                if n and s.slot in slots:
                    raise CorruptBlob(self.name, f"{s.name}: records slot {s.slot} used twice")
                slots.add(s.slot)
                s.lists = self._lists(s.type_id, s.name, s.slot, s.shift, n)
                out.append(s)
        except KjException as e:
            raise CorruptBlob(self.name, f"type entries: {_kj(e)}") from None
        return out


def _kj(e):
    """A pycapnp exception's message, without its stack of addresses."""
    text = str(e)
    return text.split("\nstack:")[0].strip()
