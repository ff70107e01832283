"""The Cap'n Proto schemas this package reads with: burrow.capnp (a copy
of schema/burrow.capnp, kept equal by a test), compiled by pycapnp at
import, and a ``Records`` struct of N untyped pointers (the root's
``records``, whose pointer ``recordsSlot`` a type's lists hang from).
"""

import os
import tempfile
import threading

import capnp

# pycapnp ships capnp/schema.capnp, which burrow.capnp imports.
_IMPORTS = [os.path.dirname(os.path.dirname(capnp.__file__))]
_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_records = {}
_tmp = None

burrow = capnp.load(os.path.join(_HERE, "burrow.capnp"), imports=_IMPORTS)
KjException = capnp.KjException
ListSchema = capnp._ListSchema


def pointer_offset(struct, field):
    """The pointer index of ``field`` in ``struct`` (a burrow.capnp struct)."""
    return struct.schema.fields[field].proto.slot.offset


def records_struct(slots):
    """A struct schema with at least ``slots`` AnyPointer fields ``p0``,
    ``p1``, ...: through it, pointer ``k`` of the records area is read as
    any list type. Compiled once per size (a power of two)."""
    global _tmp
    n = 16
    while n < slots:
        n *= 2
    with _lock:
        if n not in _records:
            if _tmp is None:
                _tmp = tempfile.mkdtemp(prefix="burrow-py-")
            path = os.path.join(_tmp, f"records{n}.capnp")
            with open(path, "w") as f:
                f.write(f"@0x{0xB0AA0000_00000000 | n:016x};\nstruct Records {{\n")
                f.writelines(f"  p{i} @{i} :AnyPointer;\n" for i in range(n))
                f.write("}\n")
            _records[n] = capnp.load(path).Records
        return _records[n]
