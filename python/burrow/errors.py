"""The errors burrow's Python reader raises: one hierarchy under
:class:`BurrowError`, each naming what went wrong and where (the blob or
object, the type, the ordinal), as the Rust crate's ``Error`` does.

Nothing the reader does on bad store content raises a bare ``KeyError``,
``struct.error`` or ``ValueError``: those are caught where bytes are read
and raised again as one of these.
"""


class BurrowError(Exception):
    """The base of every error this package raises."""


class ConfigError(BurrowError):
    """A setting is wrong: a store URL, an S3 variable, a missing extra."""


class StoreError(BurrowError):
    """The store could not be read (I/O, network, permissions)."""

    def __init__(self, name, reason):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class NotFound(StoreError):
    """An object the reader needs is not in the store."""

    def __init__(self, name, where=""):
        super().__init__(name, f"not found{' in ' + where if where else ''}")


class CorruptBlob(BurrowError):
    """A blob or announcement entry is not what the format says: bad magic,
    a checksum that does not match, a length past its bounds, a list that
    is not where its pointer says. ``blob`` names it."""

    def __init__(self, blob, reason):
        self.blob = blob
        self.reason = reason
        super().__init__(f"corrupt blob {blob}: {reason}")


class Incompatible(BurrowError):
    """A blob of a format version this reader does not read."""

    def __init__(self, blob, found, supported):
        self.blob = blob
        self.found = found
        self.supported = supported
        super().__init__(
            f"{blob}: format version {found} is not supported "
            f"(this reader reads versions {supported[0]} to {supported[1]})"
        )


class DatasetMismatch(BurrowError):
    """Two things that must be of one dataset are not (a blob and the
    announcement that named it, a delta and the state it applies to)."""

    def __init__(self, blob, expected, found):
        self.blob = blob
        self.expected = expected
        self.found = found
        super().__init__(f"{blob}: belongs to dataset {found}, expected {expected}")


class SchemaError(BurrowError):
    """A blob's schema nodes cannot be loaded, or a key field is not of a
    kind a key may be."""


class NoSuchType(BurrowError, LookupError):
    """``Consumer.view(name)`` of a type the state does not hold."""


class KeyQueryError(BurrowError, ValueError):
    """A key given to ``View.find`` does not fit the type's key: the wrong
    number of fields, a value of the wrong kind or out of range."""


class NotReady(BurrowError):
    """The consumer holds no state yet (nothing announced, or no refresh)."""


class NoPath(BurrowError):
    """No chain of announced blobs reaches the target version."""
