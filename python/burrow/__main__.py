"""``python -m burrow``: print the newest version of a store and its types.

    python -m burrow STORE [CACHE_DIR]
"""

import sys

from . import BurrowError, Consumer


def main(argv):
    if not argv or len(argv) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        c = Consumer(argv[0], cache_dir=argv[1] if len(argv) > 1 else "burrow-cache/python")
        if c.refresh() is None:
            print("nothing announced yet")
            return 0
        print(f"version {c.version} of dataset {c.dataset_id}")
        for name in c.state.types:
            v = c.view(name)
            print(f"  {name}: {len(v)} records, key ({', '.join(v.key_fields)})")
    except BurrowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
