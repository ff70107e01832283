"""moto's S3 server with its writes to keys serialised, for burrow's S3 tests.

    python moto_serial.py -H 127.0.0.1 -p 0     # moto_server's arguments

moto (5.2) checks a conditional put's `If-None-Match: *` and then stores
the object with nothing held between the two, in a threaded server: two
racing creates of one key can both succeed, which S3 never allows (the
conformance suite's eight-announcer race sees two winners now and then on a
loaded machine). This wrapper holds one lock over every PUT, POST and DELETE
of a key, so each check-then-store is atomic as on S3, then runs
moto_server's own main. Reads and listings stay concurrent. Run with the
python of moto's environment; used by tests/conformance/moto.rs and
.ci/s3.sh.
"""
import sys
import threading

from moto.s3.responses import S3Response

_writes = threading.Lock()


def _serialised(method):
    def locked(self, *args, **kwargs):
        with _writes:
            return method(self, *args, **kwargs)

    locked.__name__ = method.__name__
    return locked


for name in ("_key_response_put", "_key_response_post", "_key_response_delete"):
    setattr(S3Response, name, _serialised(getattr(S3Response, name)))

from moto.server import main  # noqa: E402

main(sys.argv[1:])
