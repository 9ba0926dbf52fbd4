"""Re-embed a collection with another model and switch to it in one step.

The user-facing collection name becomes a Milvus alias. Each model's vectors
live in a physical collection named ``<name>_<first 12 hex digits of the weights
sha256>``, and the alias moves to the new one only after every row is copied, so
searches through the name never see a half-built index.

A collection that ingest created under the plain name is a real collection, and
Milvus rejects an alias with the name of an existing collection. Its first
reindex therefore renames it to ``<name>_<old weights hash>`` and then creates
the alias. Between those two calls the name resolves to nothing. Every later
reindex switches with one atomic ``alter_alias``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, StoreError

if TYPE_CHECKING:
    from .encoder import Encoder
    from .store import MilvusStore

logger = logging.getLogger(__name__)

HASH_SUFFIX_LENGTH = 12
# Fields that the target collection computes or that are replaced: the vector
# is re-embedded, and Milvus derives the BM25 fields itself.
_NOT_COPIED = frozenset({"vector", "sparse", "lexical"})


@dataclass(frozen=True)
class ReindexResult:
    """The outcome of a reindex: row count and the collections before and after."""

    alias: str
    old_collection: str
    new_collection: str
    rows: int
    dropped_old: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "old_collection": self.old_collection,
            "new_collection": self.new_collection,
            "rows": self.rows,
            "dropped_old": self.dropped_old,
            "seconds": round(self.seconds, 1),
        }


def physical_name(name: str, fingerprint: dict[str, Any]) -> str:
    """Return the collection name for ``name``'s vectors from one model."""
    digest = str(fingerprint.get("weights_sha256") or "")[:HASH_SUFFIX_LENGTH]
    if not digest:
        raise ConfigError(
            f"model fingerprint {fingerprint!r} has no weights hash; pass "
            "--to-collection to name the new collection"
        )
    return f"{name}_{digest}"


def reindex(
    source: MilvusStore,
    encoder: Encoder,
    *,
    target: str | None = None,
    drop_old: bool = False,
    batch_rows: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReindexResult:
    """Re-embed every chunk of ``source`` with ``encoder`` and switch the name to it.

    ``source.collection`` is the user-facing name, an alias or a collection.
    ``target`` names the new collection (default ``<name>_<weights hash>``).
    ``on_progress(copied, total)`` runs after each written batch, while the name
    still points at the old collection. With ``drop_old`` the old collection is
    dropped after the switch; otherwise it stays, and ``alter_alias`` can point
    the name back at it.
    """
    started = time.perf_counter()
    name = source.collection
    source.require()
    old_collection = source.alias_target() or name
    old_fingerprint = source.fingerprint() or {}
    if dict(old_fingerprint) == dict(encoder.fingerprint):
        raise ConfigError(
            f"collection {name!r} is already embedded with this model; pass "
            "another --model to reindex"
        )
    target = target or physical_name(name, encoder.fingerprint)
    if target in (name, old_collection):
        raise ConfigError(
            f"target collection {target!r} is the collection being reindexed; "
            "pass another --to-collection"
        )

    destination = _sibling(source, target)
    try:
        if destination.exists():
            raise ConfigError(
                f"collection {target!r} already exists at {source.uri!r}; drop it "
                "or pass another --to-collection"
            )
        destination.ensure_collection(encoder.fingerprint)
        rows = _copy_rows(source, destination, encoder, batch_rows, on_progress)
        # Sealed before the switch, so the first searches through the alias use
        # the full index.
        destination.flush_after_writes(force=True)
    finally:
        destination.close()

    _switch(source, name, old_collection, target, old_fingerprint)
    # NOTE: after the switch the user-facing name is an alias of the new
    # collection, so the old one is dropped by its own (possibly new) name.
    old_collection = _renamed(name, old_collection, old_fingerprint)
    if drop_old:
        old = _sibling(source, old_collection)
        try:
            old.drop()
        finally:
            old.close()
    logger.info("Reindexed %s: %d rows, %s -> %s", name, rows, old_collection, target)
    return ReindexResult(
        alias=name,
        old_collection=old_collection,
        new_collection=target,
        rows=rows,
        dropped_old=drop_old,
        seconds=time.perf_counter() - started,
    )


def _sibling(source: MilvusStore, collection: str) -> MilvusStore:
    from .store import MilvusStore

    return MilvusStore(
        source.uri,
        collection,
        token=source._token,
        consistency_level=source.consistency_level,
        index_type=source.index_type,
        index_params=source.index_params,
    )


def _copy_rows(
    source: MilvusStore,
    destination: MilvusStore,
    encoder: Encoder,
    batch_rows: int,
    on_progress: Callable[[int, int], None] | None,
) -> int:
    """Stream rows from ``source``, embed their text and upsert them; return the count."""
    fields = [field for field in source.field_names() if field not in _NOT_COPIED]
    total = source.count()
    copied = 0
    for page in source.iter_rows("", fields, batch_size=batch_rows):
        vectors = encoder.encode_passages([row["text"] for row in page])
        rows = [
            {**row, "vector": [float(x) for x in vector]}
            for row, vector in zip(page, vectors, strict=True)
        ]
        copied += destination.upsert(rows)
        destination.flush_if_due()
        if on_progress is not None:
            on_progress(copied, total)

    stored = destination.count()
    if stored != copied:
        raise StoreError(
            f"collection {destination.collection!r} has {stored} rows after copying "
            f"{copied}; the name still points at the old collection. Drop "
            f"{destination.collection!r} and run reindex again"
        )
    return copied


def _switch(
    store: MilvusStore,
    name: str,
    old_collection: str,
    target: str,
    old_fingerprint: dict[str, Any],
) -> None:
    if old_collection != name:
        store.alter_alias(name, target)
        return
    # NOTE: the name resolves to nothing between these two calls, because Milvus
    # cannot rename a collection and create an alias in one step.
    renamed = _renamed(name, old_collection, old_fingerprint)
    store.rename_collection(name, renamed)
    try:
        store.create_alias(name, target)
    except StoreError:
        # Give the name back to the old collection rather than leave it unbound.
        store.rename_collection(renamed, name)
        raise


def _renamed(name: str, old_collection: str, old_fingerprint: dict[str, Any]) -> str:
    """Return the old collection's name after the switch."""
    if old_collection != name:
        return old_collection
    try:
        return physical_name(name, old_fingerprint)
    except ConfigError:
        return f"{name}_previous"
