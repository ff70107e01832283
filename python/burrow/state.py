"""A read state: the records of one version, read in place from mapped
blobs (the Rust owner is ``consumer/state.rs``).

Per type, records live in the snapshot the state started from, or in one
of the deltas applied since. ``touched`` maps each ordinal a delta touched
to where its record now is (a delta's section and element) or to ``None``
(removed); every other ordinal is the snapshot's, present when its bitmap
bit is set. Key lookups probe the key index the producer shipped in the
snapshot, behind an overlay of key hashes added by deltas; every candidate
is confirmed by the record's own key, so a stale index entry (a removed
key, a reused ordinal) never answers. Applying a delta copies the
``touched`` and overlay maps (work in proportion to the deltas applied,
never to the records) and leaves the state it came from intact.
"""

from .errors import CorruptBlob, DatasetMismatch
from .key import key_hash

MAX_CREATED_HOLES = 1 << 26


class TypeState:
    """The records of one type in a read state."""

    __slots__ = (
        "type_id", "name", "key_fields", "record_count", "ordinal_limit",
        "base", "touched", "overlay", "blob_name",
    )

    def __init__(self, type_id, name, key_fields):
        self.type_id = type_id
        self.name = name
        self.key_fields = key_fields
        self.record_count = 0
        self.ordinal_limit = 0
        self.base = None
        self.touched = {}
        self.overlay = {}
        self.blob_name = "(empty)"

    @classmethod
    def from_snapshot(cls, s):
        t = cls(s.type_id, s.name, s.key_fields)
        t.record_count, t.ordinal_limit = s.record_count, s.ordinal_limit
        t.base = s
        t.blob_name = s.blob.name
        return t

    def _copy(self):
        t = TypeState(self.type_id, self.name, self.key_fields)
        t.record_count, t.ordinal_limit, t.base = self.record_count, self.ordinal_limit, self.base
        t.touched = dict(self.touched)
        t.overlay = {h: list(o) for h, o in self.overlay.items()}
        t.blob_name = self.blob_name
        return t

    def _base_present(self, o):
        b = self.base
        if b is None or o >= b.ordinal_limit:
            return False
        return not b.present or (b.present[o >> 6] >> (o & 63)) & 1 == 1

    def has(self, o):
        if o in self.touched:
            return self.touched[o] is not None
        return self._base_present(o)

    def get(self, o):
        """The pycapnp reader of ordinal ``o``, or ``None`` for a hole."""
        if not 0 <= o < self.ordinal_limit:
            return None
        loc = self.touched.get(o, 0)
        if loc is None:
            return None
        if loc != 0:
            section, i = loc
            return section.element(i)
        if not self._base_present(o):
            return None
        return self.base.element(o)

    def ordinals(self):
        """Every ordinal holding a record, ascending."""
        touched = self.touched
        b = self.base
        present = b.present if b is not None else None
        base_limit = b.ordinal_limit if b is not None else 0
        for o in range(self.ordinal_limit):
            if o in touched:
                if touched[o] is not None:
                    yield o
            elif o < base_limit and (not present or (present[o >> 6] >> (o & 63)) & 1):
                yield o

    def find(self, h, matches):
        """(ordinal, record) of the first record whose key hashes to ``h``
        and for which ``matches(record)`` holds, or ``None``: the overlay's
        ordinals first, then the shipped key index probed in place (see
        ``key.probe``, inlined here: this is the lookup's hot path)."""
        get = self.get
        if self.overlay:
            for o in self.overlay.get(h, ()):
                rec = get(o)
                if rec is not None and matches(rec):
                    return o, rec
        if self.base is None:
            return None
        index = self.base.key_index
        slots = len(index)
        if not slots:
            return None
        slot = ((h & 0xFFFFFFFF) * slots) >> 32
        tag = h >> 32
        for _ in range(slots):
            e = index[slot]
            if e == 0:
                return None
            if e >> 32 == tag:
                o = (e & 0xFFFFFFFF) - 1
                rec = get(o)
                if rec is not None and matches(rec):
                    return o, rec
            slot += 1
            if slot == slots:
                slot = 0
        return None

    def apply(self, d, created):
        """This type with delta section ``d`` applied (FORMAT.md,
        "TypeDelta": clear ``removed``, then set ``ordinals``)."""
        def bad(reason):
            return CorruptBlob(d.blob.name, f"{self.name}: {reason}")

        removed, ordinals = d.removed, d.ordinals
        limit_after = d.ordinal_limit_after
        allowance = MAX_CREATED_HOLES if created else 0
        if limit_after > self.ordinal_limit + len(ordinals) + allowance:
            raise bad(
                f"ordinal limit grows from {self.ordinal_limit} to {limit_after} "
                f"with only {len(ordinals)} records set"
            )
        nxt = self._copy()
        nxt.blob_name = d.blob.name
        nxt.ordinal_limit = max(limit_after, self.ordinal_limit)
        count = self.record_count
        last = -1
        removed_set = set()
        for o, h in zip(removed, d.removed_hashes):
            if o <= last:
                raise bad("removed ordinals are not sorted and distinct")
            last = o
            if not self.has(o):
                raise bad(f"removes ordinal {o}, which holds no record")
            lst = nxt.overlay.get(h)
            if lst is not None and o in lst:
                lst.remove(o)
                if not lst:
                    del nxt.overlay[h]
            removed_set.add(o)
            count -= 1
        last = -1
        for o, h in zip(ordinals, d.key_hashes):
            if o <= last:
                raise bad("set ordinals are not sorted and distinct")
            last = o
            if o >= nxt.ordinal_limit:
                raise bad(f"sets ordinal {o}, past the limit {limit_after}")
            if not self.has(o) or o in removed_set:
                nxt.overlay.setdefault(h, []).append(o)
                count += 1
        for o in removed:
            nxt.touched[o] = None
        for i, o in enumerate(ordinals):
            nxt.touched[o] = (d, i)
        if count != d.record_count_after:
            raise bad(
                f"leaves {count} records but says {d.record_count_after}: "
                "the delta does not apply to this state"
            )
        if limit_after < nxt.ordinal_limit:
            for o in range(limit_after, nxt.ordinal_limit):
                if nxt.has(o):
                    raise bad(
                        f"shrinks the ordinal space to {limit_after} but ordinal {o} "
                        "still holds a record"
                    )
            nxt.ordinal_limit = limit_after
        nxt.record_count = d.record_count_after
        return nxt


class ReadState:
    """The records of one version: its types by name. Immutable."""

    def __init__(self, version, dataset_id, types, blobs):
        self.version = version
        self.dataset_id = dataset_id
        self.types = types
        # The blobs this state reads from, kept open while it lives.
        self.blobs = blobs

    @classmethod
    def from_snapshot(cls, blob, version):
        env = blob.env
        if env.kind != 1 or env.to_version != version:
            raise CorruptBlob(
                blob.name,
                f"expected the snapshot of version {version}, found a "
                f"{env.kind_name} of version {env.to_version}",
            )
        types = [TypeState.from_snapshot(s) for s in blob.snapshot_sections()]
        return cls(version, blob.dataset_id, types, [blob])

    def apply(self, blob, frm, to):
        env = blob.env
        if frm != self.version:
            raise CorruptBlob(blob.name, f"moves from version {frm}, but the state is at {self.version}")
        if (env.from_version, env.to_version) != (frm, to):
            raise CorruptBlob(
                blob.name,
                f"envelope says {env.from_version} -> {env.to_version}, expected {frm} -> {to}",
            )
        if blob.dataset_id != self.dataset_id:
            raise DatasetMismatch(blob.name, self.dataset_id, blob.dataset_id)
        types = list(self.types)
        for d in blob.delta_sections():
            at = next((i for i, t in enumerate(types) if t.type_id == d.type_id), None)
            if d.dropped:
                if at is None:
                    raise CorruptBlob(
                        blob.name, f"{d.name}: drops a type the state at {frm} does not hold"
                    )
                del types[at]
                continue
            created = at is None
            if created:
                types.append(TypeState(d.type_id, d.name, d.key_fields))
                at = len(types) - 1
            if types[at].key_fields != d.key_fields:
                raise CorruptBlob(
                    blob.name,
                    f"{d.name}: key fields {list(d.key_fields)} differ from the state's "
                    f"{list(types[at].key_fields)}",
                )
            types[at] = types[at].apply(d, created)
        return ReadState(to, self.dataset_id, types, self.blobs + [blob])

    def find_types(self, name):
        """The types whose full name is ``name`` or, failing that, whose
        name after the last ``:`` or ``.`` is (``Movie`` for
        ``examples/movies.capnp:Movie``)."""
        exact = [t for t in self.types if t.name == name]
        return exact or [t for t in self.types if t.name.replace(".", ":").rsplit(":", 1)[-1] == name]


def find_key(t, spec, key_bytes, key):
    """(ordinal, record) of the record whose key bytes are ``key_bytes``
    (the query ``key`` encoded), or ``None``."""
    if spec.direct is not None:
        name = spec.direct
        return t.find(key_hash(key_bytes), lambda rec: getattr(rec, name) == key)
    return t.find(key_hash(key_bytes), lambda rec: spec.encode_record(rec) == key_bytes)
