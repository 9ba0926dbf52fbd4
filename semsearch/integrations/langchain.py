"""A LangChain retriever over ``SemanticSearch``; needs ``semsearch[langchain]``."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from ..api import SemanticSearch
from ..types import Hit


class SemsearchRetriever(BaseRetriever):
    """Retrieve chunks from a semsearch collection as LangChain documents.

    Each document's ``page_content`` is the chunk text and its ``metadata`` holds
    the other hit fields (``score``, ``source``, ``title``, ``doc_id``, ``chunk``,
    ``start``, ``end``, ``id`` and the stored ``metadata``), in the order that
    ``SemanticSearch.search`` returns them.

    >>> retriever = SemsearchRetriever(engine=engine, k=4)  # doctest: +SKIP
    >>> retriever.invoke("How does SQLite commit a transaction?")  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: SemanticSearch
    k: int = Field(4, ge=1, description="Number of chunks to return.")
    filter: str | None = Field(None, description="Milvus boolean expression.")
    where: dict[str, Any] | None = Field(
        None, description="Equality conditions on fields or metadata keys."
    )
    mode: Literal["dense", "bm25", "hybrid"] = "dense"
    min_score: float | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = self.engine.search(query, **self._search_options())
        return [hit_to_document(hit) for hit in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = await self.engine.asearch(query, **self._search_options())
        return [hit_to_document(hit) for hit in hits]

    def _search_options(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "filter": self.filter,
            "where": self.where,
            "mode": self.mode,
            "min_score": self.min_score,
        }


def hit_to_document(hit: Hit) -> Document:
    """Convert a hit to a LangChain document whose id is the chunk id."""
    metadata = hit.to_dict()
    text = metadata.pop("text")
    return Document(page_content=text, metadata=metadata, id=hit.id)


__all__ = ["SemsearchRetriever", "hit_to_document"]
