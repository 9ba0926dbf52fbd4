"""The Milvus collection: schema, fingerprint checks, upsert, delete and search.

The store knows nothing of torch: it takes and returns plain lists of floats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import (
    CollectionNotFoundError,
    FilterError,
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


def is_local_uri(uri: str) -> bool:
    """Return True when ``uri`` names a Milvus Lite file rather than a server."""
    return "://" not in uri


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


class MilvusStore:
    """One semsearch collection on Milvus Lite, a Milvus server or Zilliz Cloud."""

    def __init__(
        self,
        uri: str,
        collection: str,
        *,
        token: str | None = None,
        consistency_level: str = "Strong",
        index_type: str = "HNSW",
        index_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.consistency_level = consistency_level
        self._token = token
        self._client: MilvusClient | None = None
        # The ingest pipeline calls the store from two threads; Milvus Lite's
        # client is not documented as thread-safe, so calls are serialised.
        self._lock = threading.RLock()
        self._loaded = False
        self._schema_fields: set[str] | None = None
        self.index_type = index_type
        self.index_params = dict(index_params) if index_params else dict(HNSW_PARAMS)

    # -- connection ---------------------------------------------------------

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> MilvusClient:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        kwargs: dict[str, Any] = {"uri": self.uri}
        if self._token:
            kwargs["token"] = self._token
        try:
            client = MilvusClient(**kwargs)
        except MilvusException as exc:
            raise StoreError(self._connect_message(exc), code=exc.code) from exc
        except (OSError, RuntimeError) as exc:
            raise StoreError(self._connect_message(exc)) from exc
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
        return f"cannot connect to Milvus at {self.uri!r}: {reason}"

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
        """Run a client call, turning Milvus exceptions into StoreError."""
        from pymilvus.exceptions import MilvusException

        try:
            with self._lock:
                return func(*args, **kwargs)
        except MilvusException as exc:
            message = f"{operation} failed on collection {self.collection!r}: "
            message += exc.message or str(exc)
            if "filter" in kwargs or "expr" in kwargs:
                expression = kwargs.get("filter", kwargs.get("expr"))
                if _looks_like_parse_error(exc):
                    raise FilterError(
                        f"invalid filter expression {expression!r}: {exc.message}. "
                        "Check the syntax of Milvus boolean expressions, or use "
                        "--where key=value"
                    ) from exc
            raise StoreError(message, code=exc.code) from exc

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

    def ensure_collection(self, fingerprint: Mapping[str, Any]) -> None:
        """Create the collection for this model, or check that it matches.

        Raises ModelMismatchError when the collection records another model.
        """
        if self.exists():
            self.check_fingerprint(fingerprint)
        else:
            self._create(fingerprint)
        self._load()

    def check_fingerprint(self, fingerprint: Mapping[str, Any]) -> None:
        stored = self.fingerprint()
        if stored is None:
            raise ModelMismatchError(
                f"collection {self.collection!r} at {self.uri!r} has no semsearch model "
                "fingerprint, so it was not written by semsearch; choose another "
                "collection with --collection"
            )
        if dict(stored) != dict(fingerprint):
            raise ModelMismatchError(
                f"collection {self.collection!r} was written with model "
                f"{describe_fingerprint(stored)}, but the current model is "
                f"{describe_fingerprint(fingerprint)}. Use the same --model, or "
                "write to another --collection"
            )

    def require(self) -> None:
        """Raise CollectionNotFoundError unless the collection exists; load it."""
        if not self.exists():
            raise CollectionNotFoundError(
                f"collection {self.collection!r} not found at {self.uri!r}; "
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

        try:
            self._create_with(fingerprint, lexical=True)
        except MilvusException as exc:
            logger.info("backend rejected BM25 full-text search: %s", exc)
            self._drop_quietly()
            self._create_with(fingerprint, lexical=False)
            return
        if not self._has_bm25_function():
            logger.info("backend dropped the BM25 function; creating without it")
            self._drop_quietly()
            self._create_with(fingerprint, lexical=False)

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
        schema.add_field("metadata", DataType.JSON)

        index_params = client.prepare_index_params()
        index_type, params = self.index_type, self.index_params
        index_params.add_index(
            "vector", index_type=index_type, metric_type="COSINE", params=params
        )
        if lexical:
            # The lexical field holds the chunk text already lowercased, stemmed
            # and stripped of stop words by semsearch, so every backend scores
            # the same terms; the whitespace tokenizer only splits it.
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
            self.uri,
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
        written = 0
        for batch in batches_by_size(rows):
            self._call("upsert", self.client.upsert, self.collection, batch)
            written += len(batch)
        return written

    def delete_where(self, expression: str) -> None:
        self._call("delete", self.client.delete, self.collection, filter=expression)

    def delete_stale_chunks(self, doc_id: str, chunk_count: int) -> None:
        """Delete chunks of ``doc_id`` whose ordinal is past its current count."""
        from .filters import quote_string

        self.delete_where(
            f"doc_id == {quote_string(doc_id)} and ordinal >= {chunk_count}"
        )

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
        )
        if len(page) < QUERY_PAGE_ROWS:
            return list(page)
        return self._query_all(expression, output_fields)

    def _query_all(
        self, expression: str, output_fields: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Read a large result with a query iterator, which pages by primary key."""
        iterator = self._call(
            "query_iterator",
            self.client.query_iterator,
            self.collection,
            batch_size=1000,
            filter=expression,
            output_fields=list(output_fields),
        )
        rows: list[dict[str, Any]] = []
        try:
            while page := iterator.next():
                rows.extend(page)
        finally:
            iterator.close()
        return rows

    def count(self, expression: str = "") -> int:
        result = self._call(
            "count",
            self.client.query,
            self.collection,
            filter=expression,
            output_fields=["count(*)"],
        )
        return int(result[0]["count(*)"])

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
        if group_by_doc:
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
            raise StoreError(
                f"collection {self.collection!r} at {self.uri!r} has no BM25 full-text "
                "index: BM25 search needs Milvus 2.5 or newer (or Milvus Lite 3), and "
                "a collection created there by semsearch. Use --mode dense here"
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
        )
    )
