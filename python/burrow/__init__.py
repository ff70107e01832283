"""burrow's Python reader: follow a burrow dataset (Cap'n Proto snapshots
and deltas in a store) and read its records as pycapnp readers.

    import burrow
    c = burrow.Consumer("burrow-data", cache_dir="burrow-cache/py")
    c.refresh()                      # the newest announced (or pinned) version
    movies = c.view("Movie")
    movies.find(42).title            # by primary key (a tuple for composite keys)
    movies.get(0)                    # by ordinal
    for m in movies: ...             # every record, in ordinal order

Blobs are memory-mapped from the cache and read in place (pycapnp reads
from the map without copying); the schema comes from the schema nodes
each blob's header carries, so no ``.capnp`` file or generated code is
needed. Errors are :class:`BurrowError` subclasses naming what and where.
See README.md, "Reading from Python", and schema/FORMAT.md.
"""

from .consumer import Consumer, State, View, read_files
from .errors import (
    BurrowError, ConfigError, CorruptBlob, DatasetMismatch, Incompatible, KeyQueryError,
    NoPath, NoSuchType, NotFound, NotReady, SchemaError, StoreError,
)
from .store import LocalStore, S3Store, open_store

__all__ = [
    "Consumer", "State", "View", "read_files", "open_store", "LocalStore", "S3Store",
    "BurrowError", "ConfigError", "CorruptBlob", "DatasetMismatch", "Incompatible",
    "KeyQueryError", "NoPath", "NoSuchType", "NotFound", "NotReady", "SchemaError", "StoreError",
]
