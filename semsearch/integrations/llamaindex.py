"""A LlamaIndex retriever over ``SemanticSearch``; needs ``semsearch[llamaindex]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from llama_index.core.callbacks import CallbackManager
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ..api import SemanticSearch
from ..errors import ConfigError
from ..types import Hit

# Hit fields that LlamaIndex may show to the LLM and the embedding model; the
# others (ids, offsets, score) stay in the node's metadata only.
PROMPT_METADATA_KEYS = ("source", "title")


class SemsearchRetriever(BaseRetriever):
    """Retrieve chunks from a semsearch collection as LlamaIndex nodes.

    Each result is a ``NodeWithScore`` whose ``TextNode`` has the chunk id as
    ``id_``, the chunk text, its character span, and the other hit fields as
    metadata, in the order that ``SemanticSearch.search`` returns them.

    >>> retriever = SemsearchRetriever(engine, k=4)  # doctest: +SKIP
    >>> retriever.retrieve("How does SQLite commit a transaction?")  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: SemanticSearch,
        k: int = 4,
        filter: str | None = None,
        where: Mapping[str, Any] | None = None,
        mode: Literal["dense", "bm25", "hybrid"] = "dense",
        min_score: float | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"invalid k {k!r}: use a positive integer")
        self.engine = engine
        self.k = k
        self.filter = filter
        self.where = dict(where) if where is not None else None
        self.mode = mode
        self.min_score = min_score
        super().__init__(callback_manager=callback_manager)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.engine.search(query_bundle.query_str, **self._search_options())
        return [hit_to_node(hit) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self.engine.asearch(
            query_bundle.query_str, **self._search_options()
        )
        return [hit_to_node(hit) for hit in hits]

    def _search_options(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "filter": self.filter,
            "where": self.where,
            "mode": self.mode,
            "min_score": self.min_score,
        }


def hit_to_node(hit: Hit) -> NodeWithScore:
    """Convert a hit to a scored LlamaIndex text node whose id is the chunk id."""
    metadata = hit.to_dict()
    text = metadata.pop("text")
    hidden = [key for key in metadata if key not in PROMPT_METADATA_KEYS]
    node = TextNode(
        id_=hit.id,
        text=text,
        metadata=metadata,
        start_char_idx=hit.start,
        end_char_idx=hit.end,
        excluded_llm_metadata_keys=hidden,
        excluded_embed_metadata_keys=hidden,
    )
    return NodeWithScore(node=node, score=hit.score)


__all__ = ["SemsearchRetriever", "hit_to_node"]
