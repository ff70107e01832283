"""The 64-byte envelope every blob starts with, and the zstd frame a
stored blob may travel in (schema/FORMAT.md, "The envelope" and "Transport
compression"). The one module of this package that reads those bytes.

Checks run in the order FORMAT.md gives, before any other byte is read:
length, magic, format version, the envelope's own checksum, the kind, the
body length against its bounds and against the bytes present; then the
body checksum (xxh3-128) over the body.
"""

import struct

import xxhash
import zstandard

from .errors import CorruptBlob, Incompatible

MAGIC = b"BURROW\r\n"
ENVELOPE_LEN = 64
FORMAT_VERSION = 2
OLDEST_READABLE_VERSION = 2
KINDS = {1: "snapshot", 2: "delta", 3: "reverse delta", 4: "announcement"}
MAX_BODY_LEN = 1 << 40
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_LAYOUT = struct.Struct("<8sHHIQQQ16sQ")


class Envelope:
    """A checked envelope: ``kind`` (1..4), ``from_version``,
    ``to_version``, ``body_len``, ``checksum`` (the body's xxh3-128)."""

    __slots__ = ("kind", "from_version", "to_version", "body_len", "checksum")

    @property
    def kind_name(self):
        return KINDS[self.kind]


def decode(data, blob):
    """The envelope at the start of ``data`` (bytes, memoryview or mmap),
    checked against the ``len(data)`` bytes present. Does not read the
    body."""
    if len(data) < ENVELOPE_LEN:
        raise CorruptBlob(blob, f"{len(data)} bytes, shorter than the 64-byte envelope")
    head = bytes(data[:ENVELOPE_LEN])
    magic, version, kind, reserved, from_v, to_v, body_len, checksum, own = _LAYOUT.unpack(head)
    if magic != MAGIC:
        raise CorruptBlob(blob, f"bad magic {magic!r}, not a burrow blob")
    if not OLDEST_READABLE_VERSION <= version <= FORMAT_VERSION:
        raise Incompatible(blob, version, (OLDEST_READABLE_VERSION, FORMAT_VERSION))
    if xxhash.xxh3_64_intdigest(head[:56]) != own:
        raise CorruptBlob(blob, "envelope checksum mismatch")
    if kind not in KINDS:
        raise CorruptBlob(blob, f"unknown blob kind {kind}")
    if reserved != 0:
        raise CorruptBlob(blob, "reserved envelope bytes are not zero")
    if body_len % 8 or body_len > MAX_BODY_LEN:
        raise CorruptBlob(blob, f"body length {body_len} is not a multiple of 8 at most 2^40")
    if ENVELOPE_LEN + body_len != len(data):
        raise CorruptBlob(
            blob, f"envelope says {body_len} body bytes, the blob holds {len(data) - ENVELOPE_LEN}"
        )
    env = Envelope()
    env.kind, env.from_version, env.to_version = kind, from_v, to_v
    env.body_len = body_len
    env.checksum = int.from_bytes(checksum, "little")
    return env


def verify_body(env, data, blob):
    """Checks the body's xxh3-128 against the envelope's."""
    found = xxhash.xxh3_128_intdigest(data[ENVELOPE_LEN:])
    if found != env.checksum:
        raise CorruptBlob(
            blob, f"body checksum mismatch (envelope {env.checksum:032x}, body {found:032x})"
        )


def decode_stored(data, name, max_blob_bytes):
    """The raw blob of a stored object: itself, or the content of the one
    zstd frame it is (FORMAT.md, "Transport compression"), refused by name
    when the frame is not as the format allows."""
    if bytes(data[:8]) == MAGIC:
        return data
    if bytes(data[:4]) != ZSTD_MAGIC:
        raise CorruptBlob(name, f"neither a blob nor a zstd frame (starts {bytes(data[:8]).hex()})")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as e:
        raise CorruptBlob(name, f"corrupt zstd frame: {e}") from None
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or size < 0:
        raise CorruptBlob(name, "zstd frame does not declare its content size")
    if size > max_blob_bytes:
        raise CorruptBlob(name, f"declared size {size} exceeds the limit {max_blob_bytes}")
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 23)
        out = dctx.decompressobj()
        raw = out.decompress(data)
        if not out.eof:
            raise CorruptBlob(name, "compressed stream ends early")
        if out.unused_data:
            raise CorruptBlob(name, "bytes after the zstd frame")
    except zstandard.ZstdError as e:
        raise CorruptBlob(name, f"corrupt zstd frame: {e}") from None
    if len(raw) != size:
        raise CorruptBlob(name, f"zstd frame declares {size} bytes but holds {len(raw)}")
    if len(raw) >= ENVELOPE_LEN:
        body_len = int.from_bytes(raw[32:40], "little")
        if size != ENVELOPE_LEN + body_len:
            raise CorruptBlob(
                name, f"declared size {size} is not 64 + the envelope's body length {body_len}"
            )
    return raw
