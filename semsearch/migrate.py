"""Copy a semsearch collection between Milvus backends without embedding again.

Rows are read from the source with a query iterator and upserted into the target
in batches: vectors, text, every scalar field, metadata, and the model
fingerprint on the collection. The BM25 input field is recomputed by a target
that has BM25 full-text search and dropped by one that does not. Upserts make a
second run over the same rows a no-op.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ModelMismatchError, StoreError
from .store import (
    CHUNK_HASH_FIELD,
    LEXICAL_FIELD,
    SPARSE_FIELD,
    describe_fingerprint,
    is_local_uri,
    redact_uri,
)

if TYPE_CHECKING:
    from .store import MilvusStore

logger = logging.getLogger(__name__)

# Called with (rows copied so far, rows in the source).
MigrationProgress = Callable[[int, int], None]

DEFAULT_BATCH_SIZE = 1000
# Milvus caps one query iterator batch at 16,384 rows.
MAX_BATCH_SIZE = 16_384

# Fields the target fills itself: the analysed text for BM25 and its sparse
# vector, which the target's BM25 function derives from it.
DERIVED_FIELDS = frozenset({LEXICAL_FIELD, SPARSE_FIELD})

# Values for fields a newer target schema has and an older source lacks.
FIELD_DEFAULTS: Mapping[str, Any] = {CHUNK_HASH_FIELD: ""}


@dataclass(frozen=True)
class MigrationReport:
    """The outcome of a migration; URIs only, never tokens."""

    source_uri: str
    source_collection: str
    target_uri: str
    target_collection: str
    rows: int
    copied: int
    target_rows: int
    bm25: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RowCountMismatchError(StoreError):
    """The target's row count differs from the source's after a full copy."""

    def __init__(self, message: str, report: MigrationReport) -> None:
        self.report = report
        super().__init__(message)


def migrate(
    source: MilvusStore,
    target: MilvusStore,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: MigrationProgress | None = None,
) -> MigrationReport:
    """Copy every row of ``source`` into ``target`` and check the row counts.

    Raises ConfigError for a bad batch size or when both name the same
    collection, CollectionNotFoundError when the source is missing,
    ModelMismatchError when the target records another model, and
    RowCountMismatchError, which carries the report, when the counts differ
    afterwards.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(
            f"invalid batch size {batch_size!r}: use 1 to {MAX_BATCH_SIZE}"
        )
    if _same_collection(source, target):
        raise ConfigError(
            f"source and target are the same collection {source.collection!r} at "
            f"{redact_uri(source.uri)!r}; pass another --to URI or --to-collection"
        )
    began = time.perf_counter()
    source.require()
    if _same_collection(source, target, through_aliases=True):
        raise ConfigError(
            f"{source.collection!r} and {target.collection!r} at "
            f"{redact_uri(source.uri)!r} are one collection through an alias; pass "
            "another --to URI or --to-collection"
        )
    fingerprint = source.fingerprint()
    if fingerprint is None:
        raise ModelMismatchError(
            f"collection {source.collection!r} at {redact_uri(source.uri)!r} has no semsearch "
            "model fingerprint, so it was not written by semsearch; migrate a "
            "collection that semsearch created"
        )
    try:
        target.ensure_collection(fingerprint)
    except ModelMismatchError:
        stored = target.fingerprint()
        if stored is None:
            raise
        raise ModelMismatchError(
            f"target collection {target.collection!r} at {redact_uri(target.uri)!r} "
            f"holds vectors of model {describe_fingerprint(stored)}, and source "
            f"collection {source.collection!r} of model "
            f"{describe_fingerprint(fingerprint)}; migrate into another "
            "--to-collection, or drop the target collection first"
        ) from None
    fields, defaults = _plan_fields(source, target)

    total = source.count()
    logger.info(
        "copying %d rows from %s at %s to %s at %s",
        total,
        source.collection,
        source.uri,
        target.collection,
        target.uri,
    )
    copied = 0
    if on_progress is not None:
        on_progress(copied, total)
    for batch in source.iter_rows("", fields, batch_size=batch_size):
        rows = [_target_row(row, defaults) for row in batch]
        target.upsert(rows)
        target.flush_if_due()
        copied += len(rows)
        if on_progress is not None:
            on_progress(copied, total)

    # The rows are written; a failed flush is logged and the counts still checked.
    target.flush_after_writes(force=True)
    target_rows = target.count()
    report = MigrationReport(
        source_uri=source.uri,
        source_collection=source.collection,
        target_uri=target.uri,
        target_collection=target.collection,
        rows=total,
        copied=copied,
        target_rows=target_rows,
        bm25=target.has_lexical,
        seconds=time.perf_counter() - began,
    )
    if target_rows != total:
        raise RowCountMismatchError(
            f"row counts differ after migrating: {source.collection!r} at "
            f"{redact_uri(source.uri)!r} has {total} rows, {target.collection!r} at "
            f"{redact_uri(target.uri)!r} has {target_rows}. If the target has more "
            "rows, it holds rows that are not in the source: migrate into a new "
            "--to-collection. If it has fewer, run the migration again",
            report,
        )
    return report


def _same_place(source: MilvusStore, target: MilvusStore) -> bool:
    if is_local_uri(source.uri) and is_local_uri(target.uri):
        return os.path.abspath(source.uri) == os.path.abspath(target.uri)
    return source.uri.rstrip("/") == target.uri.rstrip("/")


def _same_collection(
    source: MilvusStore, target: MilvusStore, *, through_aliases: bool = False
) -> bool:
    """Return whether both stores name one collection.

    With ``through_aliases``, which connects, a name that is an alias counts as
    the collection it points to.
    """
    if not _same_place(source, target):
        return False
    if source.collection == target.collection:
        return True
    if not through_aliases:
        return False
    return _resolved(source) == _resolved(target)


def _resolved(store: MilvusStore) -> str:
    try:
        return store.alias_target() or store.collection
    except StoreError as exc:
        # A name whose alias lookup fails counts as a plain collection name.
        logger.debug(
            "alias lookup of %s failed, taking it as a collection: %s",
            store.collection,
            exc,
        )
        return store.collection


def _plan_fields(
    source: MilvusStore, target: MilvusStore
) -> tuple[list[str], dict[str, Any]]:
    """Return the source fields to read and the defaults for the target's others.

    Raises StoreError when the target needs a field the source lacks and no
    default exists for it.
    """
    source_fields = [f for f in source.field_names() if f not in DERIVED_FIELDS]
    target_fields = [f for f in target.field_names() if f not in DERIVED_FIELDS]
    read = [f for f in source_fields if f in target_fields]
    dropped = [f for f in source_fields if f not in target_fields]
    if dropped:
        logger.info("target has no fields %s; they are not copied", dropped)
    lacking = [f for f in target_fields if f not in source_fields]
    unknown = [f for f in lacking if f not in FIELD_DEFAULTS]
    if unknown:
        raise StoreError(
            f"target collection {target.collection!r} at {redact_uri(target.uri)!r} needs "
            f"fields {unknown} that source {source.collection!r} lacks; migrate "
            "into a new --to-collection"
        )
    return read, {f: FIELD_DEFAULTS[f] for f in lacking}


def _target_row(row: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    copied = dict(defaults)
    copied.update(row)
    # Query results may hold numpy float32 values; float() keeps them exact.
    copied["vector"] = [float(value) for value in row["vector"]]
    copied["metadata"] = dict(row.get("metadata") or {})
    return copied
