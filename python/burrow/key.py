"""Primary keys: their canonical bytes, their hash, and the key index a
producer ships (schema/FORMAT.md, "Key encoding" and "Key index"; the Rust
owners are ``schema/key.rs`` and ``schema/key_index.rs``).

A key's bytes are its fields in key order, each: an integer as 8 bytes
little-endian (signed fields as i64, unsigned fields and enums as u64), a
bool as one byte (0 or 1), text (UTF-8, no NUL) and data as a u32
little-endian length and the bytes. The hash is xxh3-64 (seed 0) of those
bytes. A query encodes its values with the field kinds of the type's
schema node, so ``find(42)`` on an ``Int32`` key and on a ``UInt64`` key
give the bytes the producer hashed for each.
"""

import struct

import xxhash

from .errors import KeyQueryError, SchemaError

_INTS = {
    "int8": (True, 8), "int16": (True, 16), "int32": (True, 32), "int64": (True, 64),
    "uint8": (False, 8), "uint16": (False, 16), "uint32": (False, 32), "uint64": (False, 64),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


def key_hash(data):
    return xxhash.xxh3_64_intdigest(data)


def probe(index, h):
    """The ordinals a key index (``memoryview`` of u64 slots) holds under
    hash ``h``, in probe order: linear probing from the home slot
    ``((h & 0xffffffff) * slots) >> 32`` to the first free slot, keeping
    the slots whose tag (high 32 bits) is ``h >> 32``."""
    slots = len(index)
    if slots == 0:
        return
    slot = ((h & 0xFFFFFFFF) * slots) >> 32
    tag = h >> 32
    for _ in range(slots):
        e = index[slot]
        if e == 0:
            return
        if e >> 32 == tag:
            yield (e & 0xFFFFFFFF) - 1
        slot += 1
        if slot == slots:
            slot = 0


class KeySpec:
    """A type's key resolved against its struct schema (pycapnp)."""

    def __init__(self, type_name, schema, key_fields, loader):
        self.type_name = type_name
        self.names = tuple(key_fields)
        self.fields = []
        for name in key_fields:
            def bad(reason, name=name):
                return SchemaError(f"{type_name}: key field {name}: {reason}")

            field = schema.fields.get(name)
            if field is None:
                raise bad("no such field")
            proto = field.proto
            if proto.discriminantValue != 0xFFFF:
                raise bad("is a union member, so it may be absent")
            if proto.which() != "slot":
                raise bad("is a group")
            ty = proto.slot.type
            kind = ty.which()
            enum = None
            if kind == "enum":
                enum = dict(loader.get(ty.enum.typeId).as_enum().enumerants)
            elif kind not in _INTS and kind not in ("bool", "text", "data"):
                raise bad(f"is of type {kind}, which cannot be a key")
            self.fields.append((name, kind, enum))
        # A one-integer key is encoded by one pack and confirmed by
        # comparing the record's field with the query value (the Rust
        # DirectKey).
        self.direct = None
        if len(self.fields) == 1 and self.fields[0][1] in _INTS:
            signed, bits = _INTS[self.fields[0][1]]
            lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
            self.direct = key_fields[0]
            self._direct = ((_I64 if signed else _U64).pack, lo, hi)

    def _encode(self, out, kind, enum, value, name, query):
        def wrong(reason):
            return KeyQueryError(f"{self.type_name}: key field {name}: {reason}")

        if kind in _INTS:
            signed, bits = _INTS[kind]
            if not isinstance(value, int) or isinstance(value, bool):
                raise wrong(f"expected an integer, got {type(value).__name__}")
            lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
            if not lo <= value < hi:
                raise wrong(f"{value} is out of range for {kind}")
            out += _I64.pack(value) if signed else _U64.pack(value)
        elif kind == "enum":
            if isinstance(value, str):
                if value not in enum:
                    raise wrong(f"{value!r} is not an enumerant ({', '.join(enum)})")
                value = enum[value]
            elif hasattr(value, "raw"):
                value = value.raw
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 16:
                raise wrong(f"expected an enumerant name or number, got {value!r}")
            out += _U64.pack(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise wrong(f"expected a bool, got {type(value).__name__}")
            out.append(1 if value else 0)
        else:
            if kind == "text":
                if not isinstance(value, str):
                    raise wrong(f"expected str, got {type(value).__name__}")
                value = value.encode("utf-8")
            elif not isinstance(value, (bytes, bytearray, memoryview)):
                raise wrong(f"expected bytes, got {type(value).__name__}")
            value = bytes(value)
            out += _U32.pack(len(value))
            out += value

    def encode_query(self, key):
        """The canonical bytes of a query: a value for a one-field key, a
        tuple of values in key order for a composite key."""
        if self.direct is not None and type(key) is int:
            pack, lo, hi = self._direct
            if lo <= key < hi:
                return pack(key)
        values = key if isinstance(key, tuple) else (key,)
        if len(values) != len(self.fields):
            raise KeyQueryError(
                f"{self.type_name}: the key has {len(self.fields)} field(s) "
                f"({', '.join(self.names)}), the value gave {len(values)}"
            )
        out = bytearray()
        for (name, kind, enum), value in zip(self.fields, values):
            self._encode(out, kind, enum, value, name, True)
        return bytes(out)

    def matches(self, record, key_bytes, key):
        """Whether ``record`` has the key whose bytes are ``key_bytes``
        (``key``: the query value, for a one-integer key)."""
        if self.direct is not None:
            return getattr(record, self.direct) == key
        return self.encode_record(record) == key_bytes

    def encode_record(self, record):
        """The canonical key bytes of a record (a pycapnp reader)."""
        out = bytearray()
        for name, kind, enum in self.fields:
            self._encode(out, kind, enum, getattr(record, name), name, False)
        return bytes(out)

    def value(self, record):
        """The record's key as a query would give it: a value, or a tuple."""
        vals = tuple(getattr(record, name) for name, _, _ in self.fields)
        vals = tuple(str(v) if k == "enum" else v for v, (_, k, _) in zip(vals, self.fields))
        return vals[0] if len(vals) == 1 else vals
