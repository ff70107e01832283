"""Where a dataset lives: a local directory or an S3 prefix, read-only.

Object names follow schema/FORMAT.md, "Object names" (the Rust owner is
``blobstore/names.rs``): numbers zero-padded to 20 digits. A store answers
three questions, the ones a consumer asks: the bytes of one object
(:class:`NotFound` when it is absent), the names under a prefix, and its
display name. S3 takes the same ``AWS_*`` settings as the CLI
(``blobstore/config.rs``, through object_store's ``from_env``):
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``; default ``us-east-1``),
``AWS_ENDPOINT`` (or ``AWS_ENDPOINT_URL``), ``AWS_ALLOW_HTTP`` (a plain
``http://`` endpoint is refused unless it is ``true``, as the CLI refuses
it) and ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST`` (path-style requests unless
``true``). S3 needs the ``s3`` extra (``pip install burrow[s3]``, boto3).
"""

import os

from .errors import ConfigError, NotFound, StoreError

LATEST = "announce/latest"


def snapshot_name(v):
    return f"snapshot/{v:020d}"


def delta_name(a, b):
    return f"delta/{a:020d}-{b:020d}"


def reverse_name(a, b):
    return f"reverse/{a:020d}-{b:020d}"


def announce_name(seq):
    return f"announce/{seq:020d}"


def cache_file_name(name):
    """A blob's file name in a cache: the object name with ``/`` as ``-``."""
    return name.replace("/", "-")


class LocalStore:
    """A store in a local directory (``burrow --store DIR``)."""

    def __init__(self, root):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise ConfigError(f"store {self.root}: no such directory")

    def __repr__(self):
        return f"LocalStore({self.root!r})"

    @property
    def display(self):
        return self.root

    def get(self, name):
        path = os.path.join(self.root, *name.split("/"))
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(name, self.root) from None
        except OSError as e:
            raise StoreError(name, f"cannot read {path}: {e}") from None

    def list(self, prefix):
        path = os.path.join(self.root, prefix)
        try:
            entries = os.listdir(path)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StoreError(prefix, f"cannot list {path}: {e}") from None
        return [f"{prefix}/{e}" for e in entries if not e.startswith(".")]


def _env_true(name):
    return os.environ.get(name, "").strip().lower() == "true"


class S3Store:
    """A store under ``s3://bucket/prefix``, read through boto3."""

    def __init__(self, bucket, prefix=""):
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError:
            raise ConfigError(
                f"s3://{bucket}: reading S3 needs boto3 (pip install 'burrow[s3]')"
            ) from None
        self._errors = botocore.exceptions
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        endpoint = os.environ.get("AWS_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and endpoint.startswith("http://") and not _env_true("AWS_ALLOW_HTTP"):
            raise ConfigError(
                f"S3 endpoint {endpoint} is plain http, which is refused unless allowed: "
                "set AWS_ALLOW_HTTP=true, or use https"
            )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        style = "virtual" if _env_true("AWS_VIRTUAL_HOSTED_STYLE_REQUEST") else "path"
        self._s3 = boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region,
            config=botocore.config.Config(
                s3={"addressing_style": style},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def __repr__(self):
        return f"S3Store({self.display!r})"

    @property
    def display(self):
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, name):
        return f"{self.prefix}/{name}" if self.prefix else name

    def get(self, name):
        try:
            out = self._s3.get_object(Bucket=self.bucket, Key=self._key(name))
            return out["Body"].read()
        except self._errors.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(name, self.display) from None
            raise StoreError(name, f"S3 GET from {self.display}: {e}") from None
        except self._errors.BotoCoreError as e:
            raise StoreError(name, f"S3 GET from {self.display}: {e}") from None

    def list(self, prefix):
        out = []
        base = self._key(prefix) + "/"
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(prefix + "/" + obj["Key"][len(base):])
        except (self._errors.ClientError, self._errors.BotoCoreError) as e:
            raise StoreError(prefix, f"S3 LIST of {self.display}: {e}") from None
        return out


def open_store(store):
    """A store from a path, a ``file://`` URL, an ``s3://bucket/prefix``
    URL, or a store object (anything with ``get``, ``list``, ``display``)."""
    if hasattr(store, "get") and hasattr(store, "list"):
        return store
    text = os.fspath(store)
    if text.startswith("s3://"):
        rest = text[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"store URL {text}: no bucket")
        return S3Store(bucket, prefix)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise ConfigError(f"store URL {text}: only directories, file:// and s3:// are read")
    return LocalStore(text)
