"""Cap'n Proto pointers read by hand, for what pycapnp cannot hand out:
the raw location of a list (so that a key index, a presence bitmap or a
delta's ordinals are read as a zero-copy ``memoryview`` of the mapped
blob, not element by element through pycapnp) and the shape of a type's
record lists, checked before pycapnp reads them (schema/FORMAT.md,
"Records"; the Rust owner is ``schema/blob/read.rs`` ``record_lists``).

Every target is bounds-checked against the segment; a bad pointer is a
:class:`~burrow.errors.CorruptBlob` naming the blob and what was read.
"""

from .errors import CorruptBlob

SIZE_BYTE4 = 4
SIZE_BYTE8 = 5
SIZE_POINTER = 6
SIZE_COMPOSITE = 7
MAX_LIST_SHIFT = 28


class Segment:
    """A one-segment message's words (``memoryview`` of format ``Q``) and
    bytes, with the blob's name for errors."""

    def __init__(self, data, blob):
        self.bytes = data
        self.words = data.cast("Q")
        self.blob = blob

    def bad(self, reason):
        return CorruptBlob(self.blob, reason)

    def _target(self, at, words):
        p = self.words[at]
        off = (p & 0xFFFFFFFF) >> 2
        if off >= 1 << 29:
            off -= 1 << 30
        t = at + 1 + off
        if t < 0 or t + words > len(self.words):
            raise self.bad(f"pointer at word {at} points outside the segment")
        return t

    def struct(self, at):
        """The struct the pointer at word ``at`` points to, as (data start,
        data words, pointer start, pointer count); ``None`` for null."""
        p = self.words[at]
        if p == 0:
            return None
        if p & 3 != 0:
            raise self.bad(f"pointer at word {at} is not a struct pointer")
        dw, pc = (p >> 32) & 0xFFFF, p >> 48
        t = self._target(at, dw + pc)
        return t, dw, t + dw, pc

    def list(self, at):
        """The list the pointer at word ``at`` points to, as (start word,
        element size code, count); composite lists as (first element word,
        7, count, data words, pointer count)."""
        p = self.words[at]
        if p == 0:
            return None
        if p & 3 != 1:
            raise self.bad(f"pointer at word {at} is not a list pointer")
        size, count = (p >> 32) & 7, p >> 35
        if size == SIZE_COMPOSITE:
            t = self._target(at, count + 1)
            tag = self.words[t]
            n = (tag & 0xFFFFFFFF) >> 2
            dw, pc = (tag >> 32) & 0xFFFF, tag >> 48
            if tag & 3 != 0 or n * (dw + pc) != count:
                raise self.bad(f"composite list at word {t} has a bad tag")
            return t + 1, size, n, dw, pc
        bits = {0: 0, 1: 1, 2: 8, 3: 16, 4: 32, 5: 64, 6: 64}[size]
        t = self._target(at, (count * bits + 63) // 64)
        return t, size, count

    def scalars(self, at, size, fmt, what):
        """A list of fixed-width integers at pointer ``at`` as a
        ``memoryview`` of ``fmt`` (``Q`` or ``I``), empty for null."""
        found = self.list(at)
        if found is None:
            return memoryview(b"").cast(fmt)
        start, got, count = found[:3]
        if got != size:
            raise self.bad(f"{what} is not a list of {8 if fmt == 'Q' else 4}-byte integers")
        width = 8 if fmt == "Q" else 4
        return self.bytes[start * 8 : start * 8 + count * width].cast(fmt)


def entry_pointers(seg, list_field, index):
    """The pointer section (start, count) of element ``index`` of the
    composite list in the root's pointer ``list_field`` (a blob's type
    entries)."""
    root = seg.struct(0)
    if root is None or root[3] <= list_field:
        raise seg.bad("the root has no type list")
    found = seg.list(root[2] + list_field)
    if found is None or found[1] != SIZE_COMPOSITE or index >= found[2]:
        raise seg.bad(f"type entry {index} is not in the root's type list")
    start, _, _, dw, pc = found
    at = start + index * (dw + pc)
    return at + dw, pc


def record_lists(seg, name, slot, shift, length, node_size):
    """Checks the shape of the lists of ``length`` elements in ``slot`` of
    the root's ``Records`` (pointer 2) as the Rust reader does: a list of
    ``ceil(length / 2**shift)`` list pointers, each to a struct list of
    the expected length, all of one element size, no larger than the
    type's node (``node_size``: data words, pointers; ``None`` unknown)."""
    def bad(reason):
        return seg.bad(f"{name}: {reason}")

    if shift > MAX_LIST_SHIFT:
        raise bad(f"list shift {shift} exceeds {MAX_LIST_SHIFT}")
    if length == 0:
        return
    root = seg.struct(0)
    if root is None or root[3] <= 2:
        raise bad("the blob has no records area")
    records = seg.struct(root[2] + 2)
    if records is None or records[3] <= slot:
        raise bad(f"records slot {slot} is not in the records struct")
    per = 1 << shift
    expected = -(-length // per)
    outer = seg.list(records[2] + slot)
    if outer is None or outer[1] != SIZE_POINTER or outer[2] != expected:
        raise bad(f"records slot {slot} is not a list of {expected} list pointers")
    size = None
    for k in range(expected):
        inner = seg.list(outer[0] + k)
        n = min(per, length - k * per)
        if inner is None or inner[1] != SIZE_COMPOSITE:
            raise bad(f"record list {k} is not a list of structs")
        if inner[2] != n:
            raise bad(f"record list {k} holds {inner[2]} elements, expected {n}")
        if size is None:
            size = inner[3:5]
            if node_size is not None and (size[0] > node_size[0] or size[1] > node_size[1]):
                raise bad(
                    f"record list 0 has elements of {size[0]} data words and {size[1]} "
                    f"pointers, larger than the type's struct ({node_size[0]} data words, "
                    f"{node_size[1]} pointers)"
                )
        elif inner[3:5] != size:
            raise bad(f"record list {k} has another element size than list 0")
