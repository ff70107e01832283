"""The announcement log, read (schema/FORMAT.md, "The announcement log";
the Rust owner is ``announcer/``): entries ``announce/<seq>``, dense from
1, each an envelope (kind 4) and an ``Announcement`` message, and the
best-effort hint ``announce/latest``.

A reader starts from the hint (or a LIST of ``announce/`` when it is
missing or unreadable) and probes ``seq + 1, seq + 2, ...`` until one is
missing. Every entry read is checked: its envelope and checksum, its seq
against its name, a non-zero dataset id equal to its neighbour's, and its
links (``fromVersion`` before ``version``, ``snapshotVersion`` at or
below it).
"""

from dataclasses import dataclass

from . import envelope
from ._capnp import KjException, burrow
from .blob import dataset_hex
from .errors import CorruptBlob, DatasetMismatch, NotFound
from .store import LATEST, announce_name

MAX_ENTRY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Announcement:
    seq: int
    kind: str  # "announce", "pin" or "unpin"
    version: int
    from_version: int
    snapshot_version: int
    has_snapshot: bool
    pinned_version: int  # 0: not pinned
    producer_id: str
    timestamp_micros: int
    snapshot_bytes: int
    delta_bytes: int
    reverse_bytes: int
    dataset_id: str

    @property
    def target(self):
        """Where consumers should be: the pin, else the newest version."""
        return self.pinned_version or self.version


def decode(data, name):
    """An entry from its stored bytes, checked."""
    if len(data) > MAX_ENTRY_BYTES:
        raise CorruptBlob(name, f"announcement entry of {len(data)} bytes, over {MAX_ENTRY_BYTES}")
    env = envelope.decode(data, name)
    if env.kind != 4:
        raise CorruptBlob(name, f"expected an announcement, found a {env.kind_name}")
    envelope.verify_body(env, data, name)
    body = bytes(data[64:])
    if len(body) < 8 or int.from_bytes(body[:4], "little") != 0:
        raise CorruptBlob(name, "the body is not one segment filling it")
    try:
        with burrow.Announcement.from_bytes(
            body, traversal_limit_in_words=1 << 16, nesting_limit=8
        ) as a:
            raw = a.kind
            raw = raw.raw if hasattr(raw, "raw") else raw
            kinds = ("announce", "pin", "unpin")
            kind = raw if isinstance(raw, str) else (kinds[raw] if 0 <= raw < 3 else None)
            if kind not in kinds:
                raise CorruptBlob(name, f"unknown announcement kind {raw}")
            entry = Announcement(
                seq=a.seq, kind=kind, version=a.version, from_version=a.fromVersion,
                snapshot_version=a.snapshotVersion, has_snapshot=a.hasSnapshot,
                pinned_version=a.pinnedVersion, producer_id=a.producerId,
                timestamp_micros=a.timestampMicros, snapshot_bytes=a.snapshotBytes,
                delta_bytes=a.deltaBytes, reverse_bytes=a.reverseBytes,
                dataset_id=dataset_hex(a.datasetIdHi, a.datasetIdLo),
            )
    except KjException as e:
        raise CorruptBlob(name, f"announcement message: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise CorruptBlob(name, "producer id is not UTF-8") from None
    if entry.seq != env.to_version:
        raise CorruptBlob(name, f"entry says seq {entry.seq} but its envelope says {env.to_version}")
    if entry.dataset_id == "0" * 32:
        raise CorruptBlob(name, "the entry has no dataset identity")
    if entry.from_version >= entry.version and entry.from_version != 0:
        raise CorruptBlob(
            name, f"version {entry.version} claims a delta from the later version {entry.from_version}"
        )
    if entry.snapshot_version > entry.version:
        raise CorruptBlob(
            name, f"nearest snapshot {entry.snapshot_version} is after version {entry.version}"
        )
    return entry


class AnnouncementLog:
    """The log of one store, with the entries read so far remembered
    (entries are immutable)."""

    def __init__(self, store):
        self.store = store
        self._entries = {}

    def read(self, seq):
        """Entry ``seq``, or ``None`` if it does not exist."""
        if seq in self._entries:
            return self._entries[seq]
        name = announce_name(seq)
        try:
            data = self.store.get(name)
        except NotFound:
            return None
        entry = decode(data, name)
        if entry.seq != seq:
            raise CorruptBlob(name, f"holds the entry of seq {entry.seq}")
        self._entries[seq] = entry
        return entry

    def _neighbour(self, prev, nxt):
        if prev.dataset_id != nxt.dataset_id:
            raise DatasetMismatch(announce_name(nxt.seq), prev.dataset_id, nxt.dataset_id)

    def _listed_max(self):
        seqs = []
        for name in self.store.list("announce"):
            tail = name.rsplit("/", 1)[-1]
            if tail.isdigit() and len(tail) == 20:
                seqs.append(int(tail))
        return max(seqs) if seqs else None

    def latest(self):
        """The newest entry, or ``None`` when nothing was announced."""
        start = None
        try:
            text = self.store.get(LATEST).decode("ascii", "replace").strip()
            if text.isdigit() and len(text) <= 20:
                start = int(text)
        except NotFound:
            pass
        if start is None:
            start = self._listed_max()
            if start is None:
                return None
        newest = self.read(start)
        if newest is None:
            start = self._listed_max()
            newest = self.read(start) if start is not None else None
            if newest is None:
                return None
        while True:
            nxt = self.read(newest.seq + 1)
            if nxt is None:
                return newest
            self._neighbour(newest, nxt)
            newest = nxt

    def before(self, entry):
        if entry.seq <= 1:
            return None
        prev = self.read(entry.seq - 1)
        if prev is not None:
            self._neighbour(prev, entry)
        return prev

    def find_version(self, newest, version):
        """The announce entry that published ``version``, walking back."""
        entry = newest
        while entry is not None:
            if entry.kind == "announce" and entry.version == version:
                return entry
            if entry.version < version:
                return None
            entry = self.before(entry)
        return None

    def chain_to(self, head, from_version):
        """The announce entries from ``from_version`` (inclusive; left out
        when 0) to ``head``, oldest first, each linked to the one before
        by its delta; ``None`` when the log links none."""
        out = [head]
        entry = head
        while entry.version > from_version:
            if entry.from_version < from_version:
                return None
            if entry.from_version == 0:
                if from_version == 0:
                    break
                return None
            want = entry.from_version
            at = entry
            while True:
                prev = self.before(at)
                if prev is None or prev.version < want:
                    return None
                if prev.kind == "announce" and prev.version == want:
                    break
                at = prev
            out.append(prev)
            entry = prev
        out.reverse()
        if from_version != 0 and out[0].version != from_version:
            return None
        return out
