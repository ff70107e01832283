"""Measures the Python reader against a plain dict of the same records.

    python -m burrow.bench --store burrow-data [--type Movie] [--lookups 100000]

Prints, for the store's newest version: open to first lookup (a consumer
with an empty cache: fetch, check, map, first ``find``; then again with
the cache warm), ``find`` and ``get`` in ns/op over random keys, a full
scan reading each record's key field, and the same for a ``dict`` of the
records (key -> ``to_dict()``), with the time to build that dict and the
resident memory it adds.
"""

import argparse
import os
import random
import shutil
import tempfile
import time

from .consumer import Consumer


def _rss_mb():
    """This process's resident memory (Linux), in MB; 0 elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _ns(seconds, n):
    return seconds / max(n, 1) * 1e9


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m burrow.bench", description=__doc__.splitlines()[0])
    p.add_argument("--store", default="burrow-data")
    p.add_argument("--type", default="Movie")
    p.add_argument("--lookups", type=int, default=100_000)
    args = p.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="burrow-bench-")
    try:
        rows = run(args.store, args.type, args.lookups, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>12.1f} {unit}")


def run(store, type_name, lookups, cache):
    rows = []
    for label in ("cold cache", "warm cache"):
        t0 = time.perf_counter()
        c = Consumer(store, cache_dir=cache)
        c.refresh()
        v = c.view(type_name)
        first = v.get(next(iter(v.ordinals())))
        assert v.find(v.key_of(first)) is not None
        rows.append((f"open to first lookup ({label})", (time.perf_counter() - t0) * 1e3, "ms"))
    n = len(v)
    key_name = v.key_fields[0]
    keys = [v.key_of(r) for r in v]
    rng = random.Random(7)
    sample = [rng.choice(keys) for _ in range(lookups)]
    ordinals = list(v.ordinals())
    osample = [rng.choice(ordinals) for _ in range(lookups)]

    t0 = time.perf_counter()
    for k in sample:
        v.find(k)
    rows.append(("find (key index)", _ns(time.perf_counter() - t0, lookups), "ns/op"))
    t0 = time.perf_counter()
    for o in osample:
        v.get(o)
    rows.append(("get (ordinal)", _ns(time.perf_counter() - t0, lookups), "ns/op"))
    t0 = time.perf_counter()
    total = 0
    for r in v:
        total += 1 if getattr(r, key_name) is not None else 0
    scan = time.perf_counter() - t0
    rows.append((f"scan {n} records (one field each)", scan * 1e3, "ms"))
    rows.append(("scan per record", _ns(scan, n), "ns/op"))

    before = _rss_mb()
    t0 = time.perf_counter()
    table = {v.key_of(r): r.to_dict() for r in v}
    rows.append(("dict: build from the records", (time.perf_counter() - t0) * 1e3, "ms"))
    rows.append(("dict: resident memory it adds", _rss_mb() - before, "MB"))
    t0 = time.perf_counter()
    for k in sample:
        table.get(k)
    rows.append(("dict: lookup", _ns(time.perf_counter() - t0, lookups), "ns/op"))
    t0 = time.perf_counter()
    for r in table.values():
        total += 1 if r[key_name] is not None else 0
    rows.append(("dict: scan per record", _ns(time.perf_counter() - t0, n), "ns/op"))
    return rows


if __name__ == "__main__":
    main()
