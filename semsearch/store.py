"""The Milvus collection: schema, fingerprint checks, upsert, delete and search.

The store does not use torch: it takes and returns plain lists of floats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import (
    CollectionNotFoundError,
    ConfigError,
    FeatureUnavailableError,
    FilterError,
    LiteFileInUseError,
    ModelMismatchError,
    StoreError,
)
from .types import Hit

if TYPE_CHECKING:
    from pymilvus import MilvusClient

logger = logging.getLogger(__name__)

FINGERPRINT_PROPERTY = "semsearch.fingerprint"
DESCRIPTION_PREFIX = "semsearch fingerprint: "

# Milvus counts VARCHAR max_length in UTF-8 bytes; 65,535 is its largest value.
TEXT_MAX_BYTES = 65_535
DOC_ID_MAX_BYTES = 4_096
SOURCE_MAX_BYTES = 4_096
TITLE_MAX_BYTES = 2_048

# Milvus' default gRPC message limit is 64 MiB; batches stay well under it.
BATCH_MAX_BYTES = 16 * 1024 * 1024
BATCH_MAX_ROWS = 512

# Milvus caps limit + offset of one query at 16,384 rows.
QUERY_PAGE_ROWS = 16_384

# Transient failures (a server restarting, rate limits, a dropped connection)
# are retried this many times in all, waiting 0.5, 1, 2 and 4 s in between.
RETRY_ATTEMPTS = 5
RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 8.0
# Reads and idempotent writes: an upsert or delete repeated after a lost reply
# leaves the same rows as one that ran once.
RETRIED_OPERATIONS = frozenset({"upsert", "delete", "query", "count", "query_iterator"})

CHUNK_HASH_FIELD = "chunk_hash"

LEXICAL_FIELD = "lexical"
SPARSE_FIELD = "sparse"

# HNSW build parameters; M 16 and efConstruction 200 are common defaults that
# keep recall high on collections of up to millions of 384-dim vectors.
HNSW_PARAMS = {"M": 16, "efConstruction": 200}

OUTPUT_FIELDS = [
    "text",
    "doc_id",
    "ordinal",
    "char_start",
    "char_end",
    "source",
    "title",
    "metadata",
]


def chunk_id(doc_id: str, ordinal: int) -> str:
    """Return the primary key of a chunk.

    The document id is hashed to a fixed-width hex digest, so the key cannot be
    ambiguous whatever characters the id contains.
    """
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=16).hexdigest()
    return f"{digest}-{ordinal}"


def fit_bytes(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes at a character boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class StoredDocument:
    """A document as recorded in the collection."""

    doc_id: str
    source: str
    title: str
    doc_hash: str
    chunk_count: int
    stored_chunks: int

    def is_complete(self, content_hash: str) -> bool:
        """Return True when every chunk of this exact text is stored, no more."""
        return self.doc_hash == content_hash and self.chunk_count == self.stored_chunks


def _row_bytes(row: Mapping[str, Any]) -> int:
    size = 4 * len(row["vector"])
    for key in ("id", "text", "doc_id", "source", "title", "doc_hash"):
        size += len(str(row.get(key, "")).encode("utf-8"))
    return size + len(json.dumps(row.get("metadata", {}), default=str))


def batches_by_size(
    rows: Iterable[dict[str, Any]],
    max_rows: int = BATCH_MAX_ROWS,
    max_bytes: int = BATCH_MAX_BYTES,
) -> Iterator[list[dict[str, Any]]]:
    """Group rows into batches bounded by row count and estimated message size."""
    batch: list[dict[str, Any]] = []
    batch_bytes = 0
    for row in rows:
        size = _row_bytes(row)
        if batch and (len(batch) >= max_rows or batch_bytes + size > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(row)
        batch_bytes += size
    if batch:
        yield batch


_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def check_collection_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is a valid Milvus collection name.

    Milvus servers accept letters, digits and underscores, starting with a letter
    or underscore, up to 255 characters. Milvus Lite is more lenient, but a name it
    accepts must still work after a migration to a server.
    """
    if _COLLECTION_NAME.match(name):
        return
    suggestion = re.sub(r"[^A-Za-z0-9_]", "_", name.encode("ascii", "replace").decode())
    if not suggestion or suggestion[0].isdigit():
        suggestion = "c_" + suggestion
    raise ConfigError(
        f"invalid collection name {name!r}: use letters, digits and underscores, "
        f"starting with a letter or underscore, such as {suggestion[:255]!r}"
    )


def is_local_uri(uri: str) -> bool:
    """Return True when ``uri`` names a Milvus Lite file rather than a server."""
    return "://" not in uri


def redact_uri(uri: str) -> str:
    """Return ``uri`` with the password of its userinfo replaced by ``***``.

    ``http://root:secret@host:19530`` becomes ``http://root:***@host:19530``.
    Local paths and URIs without a password are returned unchanged.
    """
    if is_local_uri(uri):
        return uri
    scheme, _, rest = uri.partition("://")
    authority_end = len(rest)
    for separator in "/?#":
        position = rest.find(separator)
        if position != -1:
            authority_end = min(authority_end, position)
    authority, path = rest[:authority_end], rest[authority_end:]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return uri
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return uri
    return f"{scheme}://{user}:***@{host}{path}"


# Milvus Lite serves each file from an in-process server that stays up until it
# is released, and keeps the file locked against other processes meanwhile. The
# counts let the last store on a file release it.
_lite_users: dict[str, int] = {}
_lite_users_lock = threading.Lock()


def _acquire_lite(uri: str) -> None:
    path = os.path.abspath(uri)
    with _lite_users_lock:
        _lite_users[path] = _lite_users.get(path, 0) + 1


def _release_lite(uri: str) -> None:
    path = os.path.abspath(uri)
    with _lite_users_lock:
        remaining = _lite_users.get(path, 1) - 1
        if remaining > 0:
            _lite_users[path] = remaining
            return
        _lite_users.pop(path, None)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(path)


def lite_file_in_use(uri: str) -> bool:
    """Return True when another process holds the lock of a Milvus Lite file."""
    lock_path = os.path.join(os.path.abspath(uri), "LOCK")
    if not os.path.exists(lock_path):
        return False
    import fcntl

    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def is_retryable(exc: BaseException) -> bool:
    """Return True for errors that a later identical request may not hit.

    These are pymilvus errors marked retriable by the server, connection and
    unavailability errors, rate limits, and gRPC UNAVAILABLE, DEADLINE_EXCEEDED
    and RESOURCE_EXHAUSTED statuses.
    """
    from pymilvus.exceptions import (
        ConnectError,
        ErrorCode,
        MilvusException,
        MilvusUnavailableException,
    )

    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MilvusException):
        transient = (ConnectError, MilvusUnavailableException)
        return (
            exc.retriable
            or isinstance(exc, transient)
            or exc.code == ErrorCode.RATE_LIMIT
        )
    import grpc

    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    return False


def retry_call(
    operation: str,
    func: Callable[[], Any],
    *,
    attempts: int = RETRY_ATTEMPTS,
    first_delay: float = RETRY_FIRST_DELAY_S,
    max_delay: float = RETRY_MAX_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Call ``func`` until it succeeds, retrying retryable errors with backoff.

    The delay doubles after each failed attempt, from ``first_delay`` up to
    ``max_delay``. The last error, or the first one that is not retryable, is
    raised unchanged.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except Exception as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            logger.warning(
                "%s failed (attempt %d of %d), retrying in %.1f s: %s",
                operation,
                attempt,
                attempts,
                delay,
                exc,
            )
        sleep(delay)
        delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


# Milvus versions that first serve these features; older servers raise an
# error naming them (BM25) or fall back to exact client-side work (grouping).
BM25_MIN_VERSION = (2, 5)
GROUP_BY_MIN_VERSION = (2, 4)

# Float-vector index types of a CPU Milvus server (2.3 and newer). A server
# validates them itself, so this list only fills error messages.
SERVER_INDEX_TYPES = (
    "AUTOINDEX",
    "DISKANN",
    "FLAT",
    "HNSW",
    "IVF_FLAT",
    "IVF_PQ",
    "IVF_SQ8",
    "SCANN",
)

# Milvus Lite 3.2 searches rows still in memory exactly, and builds the index
# (FAISS HNSW or IVF, or none for FLAT) only for segments flushed to disk. At
# 30,000 flushed rows FLAT searched about twice as fast as HNSW
# (scripts/bench_lite_index.py, docs/milvus-server.md), so Lite uses FLAT: exact,
# and with no index build on flush.
LITE_DEFAULT_INDEX = "FLAT"
# Rows an ingest writes to Milvus Lite between two flushes (see rows_per_flush).
LITE_ROWS_PER_FLUSH = 4096
# Pending rows below which the end of an ingest leaves Lite unflushed.
LITE_MIN_ROWS_TO_FLUSH = 512
SERVER_DEFAULT_INDEX = "HNSW"


# Integer build and search parameters Milvus Lite reads for its index types,
# with the ranges Milvus servers enforce (a server rejects nlist 0 with "nlist
# out of range: [1, 65536]"). Lite 3.2 checks none of them: HNSW with M -5 grew
# to about 19 GB and was killed for memory, and IVF_FLAT with nlist 0 makes
# every search fail inside faiss.
INT32_MAX = 2**31 - 1
LITE_INDEX_PARAM_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "HNSW": {"M": (2, 2048), "efConstruction": (1, INT32_MAX), "ef": (1, INT32_MAX)},
    "IVF_FLAT": {"nlist": (1, 65536), "nprobe": (1, 65536)},
    "IVF_SQ8": {"nlist": (1, 65536), "nprobe": (1, 65536)},
}


def validate_lite_index_params(index_type: str, params: Mapping[str, Any]) -> None:
    """Raise ConfigError unless ``params`` are valid for ``index_type`` on Lite.

    Only the types in LITE_INDEX_PARAM_RANGES are checked. Every parameter must
    be a known name with an integer value in its range, and an IVF ``nprobe``
    may not exceed ``nlist``.
    """
    ranges = LITE_INDEX_PARAM_RANGES.get(index_type)
    if ranges is None:
        return
    for name, value in params.items():
        if name not in ranges:
            known = ", ".join(sorted(ranges))
            raise ConfigError(
                f"unknown {index_type} index parameter {name!r} (value {value!r}); "
                f"Milvus Lite reads only {known}. Fix --index-params"
            )
        low, high = ranges[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"invalid {index_type} index parameter {name} {value!r}: use an "
                f"integer in [{low}, {high}]"
            )
        if not low <= value <= high:
            raise ConfigError(
                f"invalid {index_type} index parameter {name} {value}: it must be "
                f"in [{low}, {high}]"
            )
    nlist = params.get("nlist")
    nprobe = params.get("nprobe")
    if nlist is not None and nprobe is not None and nprobe > nlist:
        raise ConfigError(
            f"invalid {index_type} index parameter nprobe {nprobe}: it must be "
            f"in [1, nlist] = [1, {nlist}]"
        )


def default_index_params(index_type: str) -> dict[str, Any]:
    """Return the build parameters semsearch uses for ``index_type``."""
    if index_type == "HNSW":
        return dict(HNSW_PARAMS)
    if index_type in ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN"):
        # NOTE: 1,024 lists suit 1M-row collections (about sqrt(rows)); pass
        # --index-params for a much smaller or larger one.
        params: dict[str, Any] = {"nlist": 1024}
        if index_type == "IVF_PQ":
            params.update({"m": 8, "nbits": 8})
        return params
    return {}


@dataclass(frozen=True)
class Capabilities:
    """The features of a Milvus backend, found by asking it.

    ``index_types`` lists the vector index types the backend builds. For Milvus
    Lite they are read from the installed milvus_lite package, and for a server
    they are the documented CPU index types.
    """

    lite: bool
    server_version: str | None
    bm25: bool
    group_by: bool
    index_types: tuple[str, ...]

    @property
    def default_index_type(self) -> str:
        return LITE_DEFAULT_INDEX if self.lite else SERVER_DEFAULT_INDEX

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": "Milvus Lite" if self.lite else "Milvus server",
            "server_version": self.server_version,
            "bm25": self.bm25,
            "group_by": self.group_by,
            "index_types": list(self.index_types),
        }


def parse_version(text: str | None) -> tuple[int, int] | None:
    """Return (major, minor) of the first ``N.N`` in a server's version string.

    Milvus servers report ``v2.3.5`` and similar; Zilliz Cloud words it
    differently but also names a Milvus version. Returns None when there is none.
    """
    if not text:
        return None
    match = re.search(r"(\d+)\.(\d+)", text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def lite_index_types() -> tuple[str, ...]:
    """Return the vector index types the installed Milvus Lite builds.

    Milvus Lite 3.2 accepts any index name when a collection is created and
    fails only when it builds the index for a flushed segment, on a later load,
    so semsearch checks the name against this list first.
    """
    from milvus_lite.index import factory

    known = set(factory.KNOWN_VECTOR_INDEX_TYPES) - {"SPARSE_INVERTED_INDEX"}
    # IVF_PQ is a known name in Milvus Lite 3.2 but raises NotImplementedError
    # when built.
    known.discard("IVF_PQ")
    if not factory.is_faiss_available():
        known = {"AUTOINDEX", "BRUTE_FORCE", "FLAT"}
    return tuple(sorted(known))


def format_version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


class MilvusStore:
    """One semsearch collection on Milvus Lite, a Milvus server or Zilliz Cloud."""

    def __init__(
        self,
        uri: str,
        collection: str,
        *,
        token: str | None = None,
        consistency_level: str = "Strong",
        index_type: str | None = None,
        index_params: Mapping[str, Any] | None = None,
    ) -> None:
        """Describe a collection; nothing connects until the first call.

        ``index_type`` and ``index_params`` apply when this store creates the
        collection. None picks FLAT on Milvus Lite and HNSW (M 16,
        efConstruction 200) on a server.
        """
        self.uri = uri
        check_collection_name(collection)
        self.collection = collection
        self.consistency_level = consistency_level
        self._token = token
        self._client: MilvusClient | None = None
        # The ingest pipeline calls the store from two threads; Milvus Lite's
        # client is not documented as thread-safe, so calls are serialised.
        self._lock = threading.RLock()
        self._loaded = False
        # Rows upserted through this store since its last flush.
        self.unflushed_rows = 0
        self._schema_fields: set[str] | None = None
        self.index_type = index_type.upper() if index_type else None
        self.index_params = dict(index_params) if index_params is not None else None
        self._capabilities: Capabilities | None = None
        self._version: str | None = None
        self._version_asked = False

    def __repr__(self) -> str:
        return (
            f"MilvusStore(uri={redact_uri(self.uri)!r}, "
            f"collection={self.collection!r})"
        )

    # -- connection ---------------------------------------------------------

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            # Two threads connecting at once would start two Milvus Lite
            # servers on one file, and the second fails on the file lock.
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> MilvusClient:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        kwargs: dict[str, Any] = {"uri": self.uri}
        if self._token:
            kwargs["token"] = self._token
        # A server that cannot be reached may come back, so the error is marked
        # retryable; a Milvus Lite file that fails to open stays failed.
        remote = not is_local_uri(self.uri)
        try:
            client = MilvusClient(**kwargs)
        except MilvusException as exc:
            message = self._connect_message(exc)
            if not remote and lite_file_in_use(self.uri):
                raise LiteFileInUseError(message, code=exc.code) from exc
            raise StoreError(message, code=exc.code, retryable=remote) from exc
        except (OSError, RuntimeError) as exc:
            raise StoreError(self._connect_message(exc), retryable=remote) from exc
        if is_local_uri(self.uri):
            _acquire_lite(self.uri)
        return client

    def _connect_message(self, exc: Exception) -> str:
        if is_local_uri(self.uri) and lite_file_in_use(self.uri):
            return (
                f"Milvus Lite file {self.uri!r} is open in another process, and "
                "Milvus Lite serves one process per file. Stop the other process, "
                "or share the data through a Milvus server (see 'Run on a Milvus "
                "server' in the README)"
            )
        reason = getattr(exc, "message", None) or str(exc)
        reason = reason.replace(self.uri, redact_uri(self.uri))
        return f"cannot connect to Milvus at {redact_uri(self.uri)!r}: {reason}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._loaded = False
            if is_local_uri(self.uri):
                _release_lite(self.uri)

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, operation: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client call, turning Milvus exceptions into StoreError.

        Operations in RETRIED_OPERATIONS are retried on transient errors first.
        """
        import grpc
        from pymilvus.exceptions import MilvusException

        def attempt() -> Any:
            with self._lock:
                return func(*args, **kwargs)

        try:
            if operation in RETRIED_OPERATIONS:
                return retry_call(f"{operation} on {self.collection!r}", attempt)
            return attempt()
        except grpc.RpcError as exc:
            raise StoreError(
                f"{operation} failed on collection {self.collection!r} at "
                f"{redact_uri(self.uri)!r}: {exc}; check that the Milvus server "
                "is running",
                retryable=is_retryable(exc),
            ) from exc
        except MilvusException as exc:
            message = f"{operation} failed on collection {self.collection!r}: "
            message += exc.message or str(exc)
            expression = kwargs.get("filter", kwargs.get("expr"))
            if expression and _is_expression_error(exc):
                raise filter_error(expression, expression_error_reason(exc)) from exc
            raise StoreError(
                message, code=exc.code, retryable=is_retryable(exc)
            ) from exc

    # -- collection ---------------------------------------------------------

    def exists(self) -> bool:
        return bool(
            self._call("has_collection", self.client.has_collection, self.collection)
        )

    def fingerprint(self) -> dict[str, Any] | None:
        """Return the model fingerprint recorded on the collection, if any."""
        info = self._call(
            "describe_collection", self.client.describe_collection, self.collection
        )
        raw = (info.get("properties") or {}).get(FINGERPRINT_PROPERTY)
        description = info.get("description") or ""
        if raw is None and description.startswith(DESCRIPTION_PREFIX):
            raw = description[len(DESCRIPTION_PREFIX) :]
        if raw is None:
            return None
        return json.loads(raw)

    def ensure_collection(self, fingerprint: Mapping[str, Any]) -> bool:
        """Create the collection for this model, or check that it matches.

        Returns True when it was created now. Raises ModelMismatchError when the
        collection records another model.
        """
        created = not self.exists()
        if created:
            self._create(fingerprint)
        else:
            self.check_fingerprint(fingerprint)
        self._load()
        return created

    def check_fingerprint(self, fingerprint: Mapping[str, Any]) -> None:
        stored = self.fingerprint()
        if stored is None:
            raise ModelMismatchError(
                f"collection {self.collection!r} at {redact_uri(self.uri)!r} has no "
                "semsearch model "
                "fingerprint, so it was not written by semsearch; choose another "
                "collection with --collection"
            )
        if dict(stored) != dict(fingerprint):
            raise ModelMismatchError(
                f"collection {self.collection!r} was written with model "
                f"{describe_fingerprint(stored)}, but the current model is "
                f"{describe_fingerprint(fingerprint)}. "
                f"{mismatch_advice(stored, fingerprint)}, or write to another "
                "--collection"
            )

    def require(self) -> None:
        """Raise CollectionNotFoundError unless the collection exists; load it.

        A Milvus Lite path that does not exist is not created: Milvus Lite would
        create an empty database there on connect.
        """
        if is_local_uri(self.uri) and not os.path.exists(self.uri):
            raise CollectionNotFoundError(
                f"collection {self.collection!r} not found: the Milvus Lite "
                f"database {self.uri!r} does not exist; run 'semsearch ingest "
                "PATH' first or pass the right --uri"
            )
        if not self.exists():
            raise CollectionNotFoundError(
                f"collection {self.collection!r} not found at "
                f"{redact_uri(self.uri)!r}; "
                "run 'semsearch ingest PATH' first or pass the right --collection"
            )
        self._load()

    def _load(self) -> None:
        # A collection is released after the process that wrote it exits, and
        # Milvus rejects searches and queries until it is loaded again.
        if not self._loaded:
            self._call("load_collection", self.client.load_collection, self.collection)
            self._loaded = True

    def _create(self, fingerprint: Mapping[str, Any]) -> None:
        """Create the collection, with BM25 full-text search when the backend has it.

        Support is detected by asking: the collection is created with a BM25
        function, and if the backend rejects it or drops it (Milvus 2.3 accepts
        the schema but silently discards the function) it is created again
        without the lexical fields.
        """
        from pymilvus.exceptions import MilvusException

        self.vector_index()
        try:
            self._create_with(fingerprint, lexical=True)
        except (MilvusException, StoreError) as exc:
            # Milvus 2.3 rejects the index on the sparse field; a rejected
            # vector index shows up again in the retry without it.
            logger.info("backend rejected BM25 full-text search: %s", exc)
            self._drop_quietly()
            self._create_without_lexical(fingerprint)
            return
        if not self._has_bm25_function():
            logger.info("backend dropped the BM25 function; creating without it")
            self._drop_quietly()
            self._create_without_lexical(fingerprint)

    def _create_without_lexical(self, fingerprint: Mapping[str, Any]) -> None:
        from pymilvus.exceptions import MilvusException

        index_type, params = self.vector_index()
        try:
            self._create_with(fingerprint, lexical=False)
        except (MilvusException, StoreError) as exc:
            # A server creates the collection before it validates the index,
            # so a rejected index leaves an empty collection behind.
            self._drop_quietly()
            if _is_index_rejection(exc):
                raise self._index_error(index_type, params, exc) from exc
            raise

    def vector_index(self) -> tuple[str, dict[str, Any]]:
        """Return the index type and build parameters for a new collection.

        Raises ConfigError for a type the backend does not build.
        """
        lite = is_local_uri(self.uri)
        default = LITE_DEFAULT_INDEX if lite else SERVER_DEFAULT_INDEX
        index_type = self.index_type or default
        params = default_index_params(index_type)
        params.update(self.index_params or {})
        if lite and index_type not in self.accepted_index_types():
            raise self._index_error(index_type, params, None)
        if lite:
            validate_lite_index_params(index_type, params)
        return index_type, params

    def _index_error(
        self, index_type: str, params: Mapping[str, Any], exc: Exception | None
    ) -> ConfigError:
        backend = "Milvus Lite" if is_local_uri(self.uri) else "this Milvus server"
        message = f"vector index type {index_type!r} with params {dict(params)} "
        if exc is None:
            message += f"is not built by {backend}"
        else:
            reason = getattr(exc, "message", None) or str(exc)
            message += f"was rejected by {backend}: {reason}"
        accepted = ", ".join(self.accepted_index_types())
        return ConfigError(
            f"{message}. Accepted index types: {accepted}. Pass one with "
            "--index-type, and its build parameters with --index-params JSON"
        )

    def capabilities(self) -> Capabilities:
        """Return what the backend serves, asking it once per store.

        The server version comes from the backend. BM25 support is found by
        creating a throwaway collection with a BM25 function and checking that
        the backend accepted and kept it, because Milvus 2.3 may silently drop
        the function. Grouping search follows from the reported version.
        """
        if self._capabilities is None:
            self._capabilities = Capabilities(
                lite=is_local_uri(self.uri),
                server_version=self.server_version(),
                bm25=self._probe_bm25(),
                group_by=self.supports_group_by(),
                index_types=self.accepted_index_types(),
            )
            logger.debug(
                "capabilities of %s: %s", redact_uri(self.uri), self._capabilities
            )
        return self._capabilities

    def server_version(self) -> str | None:
        """Return the version string the backend reports, or None."""
        from pymilvus.exceptions import MilvusException

        if not self._version_asked:
            self._version_asked = True
            try:
                with self._lock:
                    self._version = str(self.client.get_server_version())
            except MilvusException as exc:
                logger.info(
                    "backend at %s reports no version: %s", redact_uri(self.uri), exc
                )
        return self._version

    def supports_group_by(self) -> bool:
        """Return True when searches with ``group_by_field`` group on the backend.

        Milvus 2.3 accepts the parameter and ignores it, returning ungrouped hits.
        """
        if is_local_uri(self.uri):
            return True
        parsed = parse_version(self.server_version())
        return parsed is not None and parsed >= GROUP_BY_MIN_VERSION

    def accepted_index_types(self) -> tuple[str, ...]:
        if is_local_uri(self.uri):
            return lite_index_types()
        return SERVER_INDEX_TYPES

    def _probe_bm25(self) -> bool:
        """Create and drop a small collection with a BM25 function."""
        from pymilvus import DataType, Function, FunctionType
        from pymilvus.exceptions import MilvusException

        name = f"semsearch_probe_{os.urandom(6).hex()}"
        client = self.client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=64, enable_analyzer=True)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        try:
            with self._lock:
                client.create_collection(name, schema=schema)
                info = client.describe_collection(name)
        except MilvusException as exc:
            logger.info("backend rejected BM25 full-text search: %s", exc)
            return False
        finally:
            with self._lock:
                if client.has_collection(name):
                    client.drop_collection(name)
        return any(
            "sparse" in (function.get("output_field_names") or [])
            for function in info.get("functions") or []
        )

    def index_description(self) -> dict[str, Any]:
        """Return Milvus' description of the vector index of the collection."""
        return dict(
            self._call(
                "describe_index",
                self.client.describe_index,
                self.collection,
                index_name="vector",
            )
        )

    def _create_with(self, fingerprint: Mapping[str, Any], *, lexical: bool) -> None:
        from pymilvus import DataType, Function, FunctionType

        encoded = json.dumps(dict(fingerprint), sort_keys=True)
        client = self.client
        schema = client.create_schema(
            auto_id=False,
            enable_dynamic_field=False,
            description=DESCRIPTION_PREFIX + encoded,
        )
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(fingerprint["dim"]))
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=DOC_ID_MAX_BYTES)
        schema.add_field("ordinal", DataType.INT64)
        schema.add_field("chunk_count", DataType.INT64)
        schema.add_field("char_start", DataType.INT64)
        schema.add_field("char_end", DataType.INT64)
        schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_MAX_BYTES)
        schema.add_field("title", DataType.VARCHAR, max_length=TITLE_MAX_BYTES)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field(CHUNK_HASH_FIELD, DataType.VARCHAR, max_length=64)
        schema.add_field("metadata", DataType.JSON)

        index_params = client.prepare_index_params()
        index_type, params = self.vector_index()
        if is_local_uri(self.uri):
            # pymilvus 3.0 sends build parameters as one key-value pair each,
            # and Milvus Lite 3.2 reads them only from a "params" JSON pair, so
            # they are nested for Lite. Servers accept both forms.
            params = {"params": params} if params else {}
        index_params.add_index(
            "vector", index_type=index_type, metric_type="COSINE", params=params
        )
        if lexical:
            # The lexical field contains the chunk text already lowercased,
            # stemmed and stripped of stop words by semsearch, so every backend
            # scores the same terms. The standard tokenizer only splits it.
            schema.add_field(
                LEXICAL_FIELD,
                DataType.VARCHAR,
                max_length=TEXT_MAX_BYTES,
                enable_analyzer=True,
                analyzer_params={"tokenizer": "standard"},
            )
            schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name="bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=[LEXICAL_FIELD],
                    output_field_names=[SPARSE_FIELD],
                )
            )
            index_params.add_index(
                SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25"
            )
        logger.info(
            "creating collection %s at %s with %s index%s",
            self.collection,
            redact_uri(self.uri),
            index_type,
            " and BM25" if lexical else "",
        )
        self._call(
            "create_collection",
            client.create_collection,
            self.collection,
            schema=schema,
            index_params=index_params,
            consistency_level=self.consistency_level,
            properties={FINGERPRINT_PROPERTY: encoded},
        )
        self._schema_fields = None

    def _has_bm25_function(self) -> bool:
        info = self.client.describe_collection(self.collection)
        return any(
            SPARSE_FIELD in (function.get("output_field_names") or [])
            for function in info.get("functions") or []
        )

    def _drop_quietly(self) -> None:
        from pymilvus.exceptions import MilvusException

        try:
            if self.client.has_collection(self.collection):
                self.client.drop_collection(self.collection)
        except MilvusException as exc:
            logger.warning(
                "could not drop %s after a failed create: %s", self.collection, exc
            )

    @property
    def has_lexical(self) -> bool:
        """True when the collection has BM25 full-text search."""
        return LEXICAL_FIELD in self._fields()

    @property
    def has_chunk_hash(self) -> bool:
        """True when rows store the sha256 of their chunk text.

        Collections created before the field existed lack it; their rows are
        written without it and their vectors are never reused.
        """
        return CHUNK_HASH_FIELD in self._fields()

    def _fields(self) -> set[str]:
        if self._schema_fields is None:
            info = self._call(
                "describe_collection", self.client.describe_collection, self.collection
            )
            names = {field["name"] for field in info.get("fields", [])}
            if LEXICAL_FIELD in names and not self._has_bm25_function():
                names.discard(LEXICAL_FIELD)
            self._schema_fields = names
        return self._schema_fields

    def drop(self) -> None:
        if self.exists():
            self._call("drop_collection", self.client.drop_collection, self.collection)
        self._loaded = False
        self._schema_fields = None

    # -- aliases ------------------------------------------------------------
    # NOTE: Milvus resolves an alias wherever it takes a collection name, so
    # drop() on an alias drops the collection it points to (Milvus Lite 3.2).

    def alias_target(self, name: str | None = None) -> str | None:
        """Return the collection that alias ``name`` points to, or None.

        ``name`` defaults to this store's collection. None means ``name`` is no
        alias: a real collection, or nothing at all.
        """
        from pymilvus.exceptions import MilvusException

        alias = name or self.collection
        try:
            with self._lock:
                info = self.client.describe_alias(alias)
        except MilvusException as exc:
            text = (exc.message or str(exc)).lower()
            if "not exist" in text or "not found" in text:
                return None
            raise StoreError(
                f"describe_alias failed for {alias!r}: {exc.message or exc}",
                code=exc.code,
            ) from exc
        return str(info["collection_name"]) if info else None

    def create_alias(self, alias: str, target: str) -> None:
        """Create ``alias`` for collection ``target``; no collection may be so named."""
        self._call("create_alias", self.client.create_alias, target, alias)

    def alter_alias(self, alias: str, target: str) -> None:
        """Point the existing ``alias`` at ``target`` in one atomic step."""
        self._call("alter_alias", self.client.alter_alias, target, alias)

    def drop_alias(self, alias: str) -> None:
        self._call("drop_alias", self.client.drop_alias, alias)

    def rename_collection(self, old_name: str, new_name: str) -> None:
        self._call(
            "rename_collection", self.client.rename_collection, old_name, new_name
        )
        self._loaded = False
        self._schema_fields = None

    # -- writes -------------------------------------------------------------

    def upsert(self, rows: Sequence[dict[str, Any]]) -> int:
        """Upsert chunk rows in batches bounded by rows and bytes; return the count.

        Rows for a collection with BM25 get their lexical field filled here.
        """
        if self.has_lexical:
            from .lexical import lexical_text

            for row in rows:
                if LEXICAL_FIELD not in row:
                    row[LEXICAL_FIELD] = fit_bytes(
                        lexical_text(row["text"]), TEXT_MAX_BYTES
                    )
        else:
            for row in rows:
                row.pop(LEXICAL_FIELD, None)
        if not self.has_chunk_hash:
            for row in rows:
                row.pop(CHUNK_HASH_FIELD, None)
        # Milvus does not promise which of two rows with one primary key in a
        # single upsert wins, so the last one is kept here.
        rows = list({row["id"]: row for row in rows}.values())
        written = 0
        for batch in batches_by_size(rows):
            self._call("upsert", self.client.upsert, self.collection, batch)
            written += len(batch)
            self.unflushed_rows += len(batch)
        return written

    @property
    def rows_per_flush(self) -> int | None:
        """Maximum rows an ingest writes between two flushes.

        None for a server, which seals segments on its own and rate-limits
        flushes. Milvus Lite keeps written rows in an in-memory table until a
        flush, and every query and search converts that whole table row by row,
        so an ingest flushes it often.
        """
        return LITE_ROWS_PER_FLUSH if is_local_uri(self.uri) else None

    def flush_if_due(self) -> None:
        """Flush once ``rows_per_flush`` rows are pending, for a store that wants it.

        Writers call this after each batch they upsert. A failed flush is logged
        as in ``flush_after_writes``.
        """
        limit = self.rows_per_flush
        if limit is not None and self.unflushed_rows >= limit:
            self.flush_after_writes(force=True)

    def flush_after_writes(self, *, force: bool = False) -> None:
        """Flush at the end of a run of writes, and log a failure instead of raising.

        A server is always flushed, so its index covers every row. Milvus Lite
        is flushed once at least ``LITE_MIN_ROWS_TO_FLUSH`` rows are pending
        (or with ``force``). A flush added about 20 ms to each one-record
        ingest here, and a few hundred unflushed rows are estimated to add
        less than that to a search. Lite also flushes pending rows when the
        file is closed. A failed flush loses nothing, because the rows are
        written already.
        """
        lite = is_local_uri(self.uri)
        if lite and not force and self.unflushed_rows < LITE_MIN_ROWS_TO_FLUSH:
            return
        try:
            self.flush()
        except StoreError as exc:
            logger.warning(
                "flush of collection %s failed, continuing without it: %s",
                self.collection,
                exc,
            )

    def flush(self) -> None:
        """Write pending rows to sealed segments that the vector index covers.

        A server searches rows in growing segments with a temporary index (IVF
        on 2.3) until they are sealed, which lowers recall. Milvus Lite moves
        its in-memory table to a segment file, which makes later queries and
        searches far faster: at 30,000 rows a search took 1.08 s before the flush
        and 0.06 s after it (benchmarks/lite_flush.py).
        """
        self._call("flush", self.client.flush, self.collection)
        self.unflushed_rows = 0

    def delete_where(self, expression: str) -> None:
        self._call("delete", self.client.delete, self.collection, filter=expression)

    def delete_stale_chunks(self, doc_id: str, chunk_count: int) -> None:
        """Delete chunks of ``doc_id`` whose ordinal is past its current count."""
        from .filters import quote_string

        self.delete_where(
            f"doc_id == {quote_string(doc_id)} and ordinal >= {chunk_count}"
        )


    def delete_stale_chunks_many(self, documents: Sequence[tuple[str, int]]) -> None:
        """Delete, for each ``(doc_id, chunk_count)``, the chunks past that count."""
        from .filters import quote_string

        for start in range(0, len(documents), 100):
            conditions = [
                f"(doc_id == {quote_string(doc_id)} and ordinal >= {count})"
                for doc_id, count in documents[start : start + 100]
            ]
            self.delete_where(" or ".join(conditions))
    def delete_documents(self, doc_ids: Iterable[str]) -> None:
        from .filters import quote_string

        ids = list(doc_ids)
        for start in range(0, len(ids), 256):
            values = ", ".join(quote_string(v) for v in ids[start : start + 256])
            self.delete_where(f"doc_id in [{values}]")

    # -- reads --------------------------------------------------------------

    def query(
        self, expression: str, output_fields: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Return all rows matching ``expression``, past Milvus' result cap."""
        page = self._call(
            "query",
            self.client.query,
            self.collection,
            filter=expression,
            output_fields=list(output_fields),
            limit=QUERY_PAGE_ROWS,
            consistency_level=self.consistency_level,
        )
        if len(page) < QUERY_PAGE_ROWS:
            return list(page)
        rows: list[dict[str, Any]] = []
        for batch in self.iter_rows(expression, output_fields):
            rows.extend(batch)
        return rows

    def iter_rows(
        self,
        expression: str,
        output_fields: Sequence[str],
        batch_size: int = 1000,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield the rows matching ``expression`` in batches, paging by primary key.

        A query iterator reads past Milvus' cap of 16,384 rows per query.
        """
        iterator = self._call(
            "query_iterator",
            self.client.query_iterator,
            self.collection,
            batch_size=batch_size,
            filter=expression,
            output_fields=list(output_fields),
            consistency_level=self.consistency_level,
        )
        try:
            while True:
                page = self._call("query_iterator", iterator.next)
                if not page:
                    return
                yield list(page)
        finally:
            iterator.close()

    def count(self, expression: str = "") -> int:
        # NOTE: get_collection_stats reports 0 rows on Milvus 2.3.5 until a
        # flush, so rows are counted with a count(*) query at Strong consistency.
        result = self._call(
            "count",
            self.client.query,
            self.collection,
            filter=expression,
            output_fields=["count(*)"],
            consistency_level=self.consistency_level,
        )
        return int(result[0]["count(*)"])

    def field_names(self) -> list[str]:
        """Return the collection's field names in schema order."""
        info = self._call(
            "describe_collection", self.client.describe_collection, self.collection
        )
        return [field["name"] for field in info.get("fields", [])]

    def stored_documents(self, doc_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """Return what the collection records for each of ``doc_ids`` present."""
        from .filters import quote_string

        found: dict[str, StoredDocument] = {}
        for start in range(0, len(doc_ids), 256):
            part = doc_ids[start : start + 256]
            values = ", ".join(quote_string(v) for v in part)
            rows = self.query(
                f"doc_id in [{values}]",
                ["doc_id", "ordinal", "chunk_count", "doc_hash", "source", "title"],
            )
            found.update(_summarise_rows(rows))
        return found

    def documents(self, expression: str = "") -> list[StoredDocument]:
        """Return every document in the collection, sorted by source."""
        rows = self.query(
            expression,
            ["doc_id", "ordinal", "chunk_count", "doc_hash", "source", "title"],
        )
        return sorted(
            _summarise_rows(rows).values(), key=lambda d: (d.source, d.doc_id)
        )

    def search(
        self,
        vectors: Sequence[Sequence[float]],
        k: int,
        expression: str = "",
        *,
        search_params: Mapping[str, Any] | None = None,
        group_by_doc: bool = False,
    ) -> list[list[Hit]]:
        """Return the ``k`` nearest chunks for each query vector, best first."""
        params: dict[str, Any] = {"metric_type": "COSINE"}
        params.update(search_params or {"params": {"ef": max(64, k)}})
        kwargs: dict[str, Any] = {}
        # Without grouping on the backend, the searcher groups the hits itself,
        # which is exact for the documents among the candidates it fetched.
        if group_by_doc and self.supports_group_by():
            kwargs["group_by_field"] = "doc_id"
        results = self._call(
            "search",
            self.client.search,
            self.collection,
            data=[list(map(float, v)) for v in vectors],
            limit=k,
            filter=expression,
            output_fields=OUTPUT_FIELDS,
            search_params=params,
            consistency_level=self.consistency_level,
            **kwargs,
        )
        return [[hit_from_result(item) for item in result] for result in results]

    def search_lexical(
        self,
        texts: Sequence[str],
        k: int,
        expression: str = "",
    ) -> list[list[Hit]]:
        """Return the ``k`` best BM25 matches for each query text, best first.

        Scores are BM25 scores: positive, unbounded, higher is more relevant.
        """
        from .lexical import lexical_text

        if not self.has_lexical:
            version = self.server_version()
            reported = f" (this backend reports {version})" if version else ""
            raise FeatureUnavailableError(
                f"collection {self.collection!r} at {redact_uri(self.uri)!r} has no "
                "BM25 full-text "
                f"index{reported}: BM25 full-text search needs Milvus "
                f"{format_version(BM25_MIN_VERSION)} or newer (or Milvus Lite 3), and "
                "a collection created there by semsearch. Use --mode dense here, or "
                "copy the collection to such a backend with 'semsearch migrate'"
            )
        analysed = [lexical_text(text) for text in texts]
        results: list[list[Hit]] = [[] for _ in texts]
        todo = [i for i, terms in enumerate(analysed) if terms]
        if not todo:
            return results
        found = self._call(
            "search",
            self.client.search,
            self.collection,
            data=[analysed[i] for i in todo],
            anns_field=SPARSE_FIELD,
            limit=k,
            filter=expression,
            output_fields=OUTPUT_FIELDS,
            search_params={"metric_type": "BM25"},
            consistency_level=self.consistency_level,
        )
        for index, result in zip(todo, found, strict=True):
            hits = [hit_from_result(item) for item in result]
            # NOTE: Milvus Lite 3.2 returns BM25 scores negated; servers return
            # them positive. Both rank best first, so the magnitude is the score.
            results[index] = [replace(hit, score=abs(hit.score)) for hit in hits]
        return results

    def chunk_vectors(
        self, doc_ids: Sequence[str]
    ) -> dict[str, dict[str, list[float]]]:
        """Return ``{doc_id: {chunk_hash: vector}}`` for the stored chunks of docs.

        Empty when the collection does not store chunk hashes.
        """
        from .filters import quote_string

        found: dict[str, dict[str, list[float]]] = {}
        if not doc_ids or not self.has_chunk_hash:
            return found
        fields = ["doc_id", CHUNK_HASH_FIELD, "vector"]
        for start in range(0, len(doc_ids), 256):
            values = ", ".join(quote_string(v) for v in doc_ids[start : start + 256])
            for row in self.query(f"doc_id in [{values}]", fields):
                if row[CHUNK_HASH_FIELD]:
                    by_hash = found.setdefault(row["doc_id"], {})
                    by_hash[row[CHUNK_HASH_FIELD]] = list(row["vector"])
        return found

    def vectors(self, ids: Sequence[str]) -> dict[str, list[float]]:
        """Return the stored vectors for chunk ids."""
        from .filters import quote_string

        found: dict[str, list[float]] = {}
        for start in range(0, len(ids), 256):
            values = ", ".join(quote_string(v) for v in ids[start : start + 256])
            for row in self.query(f"id in [{values}]", ["id", "vector"]):
                found[row["id"]] = list(row["vector"])
        return found


def _summarise_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, StoredDocument]:
    """Fold chunk rows into one record per document.

    ``doc_hash`` is empty when the rows disagree on it, as after an interrupted
    rewrite, so such a document never looks complete.
    """
    counts: dict[str, int] = {}
    first: dict[str, Mapping[str, Any]] = {}
    mixed: set[str] = set()
    for row in rows:
        doc_id = row["doc_id"]
        counts[doc_id] = counts.get(doc_id, 0) + 1
        if doc_id in first and first[doc_id]["doc_hash"] != row["doc_hash"]:
            mixed.add(doc_id)
        if doc_id not in first or row["ordinal"] < first[doc_id]["ordinal"]:
            first[doc_id] = row
    return {
        doc_id: StoredDocument(
            doc_id=doc_id,
            source=row["source"],
            title=row["title"],
            doc_hash="" if doc_id in mixed else row["doc_hash"],
            chunk_count=int(row["chunk_count"]),
            stored_chunks=counts[doc_id],
        )
        for doc_id, row in first.items()
    }


def hit_from_result(item: Mapping[str, Any]) -> Hit:
    entity = item.get("entity", item)
    return Hit(
        id=str(item.get("id", entity.get("id"))),
        score=float(item.get("distance", item.get("score", 0.0))),
        text=entity.get("text", ""),
        doc_id=entity.get("doc_id", ""),
        chunk=int(entity.get("ordinal", 0)),
        start=int(entity.get("char_start", 0)),
        end=int(entity.get("char_end", 0)),
        source=entity.get("source", ""),
        title=entity.get("title", ""),
        metadata=dict(entity.get("metadata") or {}),
    )


def describe_fingerprint(fingerprint: Mapping[str, Any]) -> str:
    weights = str(fingerprint.get("weights_sha256", ""))[:12]
    parts = [
        f"{fingerprint.get('model')!r}",
        f"dim {fingerprint.get('dim')}",
        f"pooling {fingerprint.get('pooling')}",
    ]
    if weights:
        parts.append(f"weights {weights}")
    for key in ("precision", "query_prefix", "passage_prefix"):
        if fingerprint.get(key):
            parts.append(f"{key} {fingerprint[key]!r}")
    return "(" + ", ".join(parts) + ")"


FILTER_HINT = "check the Milvus boolean expression syntax"

# Milvus servers return code 1100 (invalid parameter) for expressions that do
# not parse or do not type-check.
EXPRESSION_ERROR_CODES = frozenset({1100})


def filter_error(expression: str, reason: str) -> FilterError:
    """Return the FilterError for an expression the backend rejected.

    ``reason`` is kept on the error as ``reason``, so a caller that combined the
    user's expression with other conditions can word it again with the user's
    own text.
    """
    error = FilterError(
        f"invalid filter expression {expression!r}: {reason}; {FILTER_HINT}"
    )
    error.reason = reason  # type: ignore[attr-defined]
    return error


def expression_error_reason(exc: Exception) -> str:
    """Return the first line of a backend's expression error, without a column.

    Milvus Lite 3.2 adds the expression with a caret under the bad token on later
    lines, and its column counts in the expression sent, which may differ from
    the one the user wrote.
    """
    text = getattr(exc, "message", None) or str(exc)
    first_line = text.strip().splitlines()[0] if text.strip() else text
    return re.sub(r" at column \d+", "", first_line)


def _is_expression_error(exc: Exception) -> bool:
    """Return True when a failed call that carried a filter failed on the filter.

    Connection and other transient failures are never expression errors.
    """
    if is_retryable(exc):
        return False
    if getattr(exc, "code", None) in EXPRESSION_ERROR_CODES:
        return True
    return _looks_like_parse_error(exc)


# The setting that changes each fingerprint field; any other field follows
# from the model.
_FINGERPRINT_SETTINGS = {
    "precision": "--precision",
    "query_prefix": "the query prefix (Encoder query_prefix)",
    "passage_prefix": "the passage prefix (Encoder passage_prefix)",
}


def mismatch_advice(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """Return which settings to match, from the fingerprint fields that differ."""
    differing = {
        key for key in set(stored) | set(current) if stored.get(key) != current.get(key)
    }
    settings = []
    if differing - set(_FINGERPRINT_SETTINGS):
        settings.append("--model")
    settings.extend(
        setting for key, setting in _FINGERPRINT_SETTINGS.items() if key in differing
    )
    if not settings:
        settings.append("--model")
    return "Use the same " + " and ".join(settings) + " as when it was written"


def _looks_like_parse_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        word in text
        for word in (
            "parse",
            "syntax",
            "cannot",
            "invalid expr",
            "unsupported",
            "not found",
            # Milvus Lite 3.2 words its expression errors like these.
            "unexpected",
            "unknown field",
            "incompatible types",
            "expected '",
            "requires a",
            "unknown function",
            "unexpected token",
            " at column ",
        )
    )


def _is_index_rejection(exc: Exception) -> bool:
    """Return True when a create failure without BM25 fields is about the index.

    Milvus 2.3.5 words these "invalid index type: X" or names the bad build
    parameter, as in "nlist out of range: [1, 65536]".
    """
    text = (getattr(exc, "message", None) or str(exc)).lower()
    return "index" in text or "out of range" in text
