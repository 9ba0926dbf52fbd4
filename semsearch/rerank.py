"""Cross-encoder reranking with any sequence-classification model."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelNotFoundError
from .types import Hit

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


class Reranker:
    """Scores (query, passage) pairs jointly and reorders hits by that score.

    A model with one output logit (the usual cross-encoder) gets a sigmoid, so
    scores lie in [0, 1]. With several labels the score is the softmax
    probability of the last label, which such models use for "relevant".
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "auto",
        batch_size: int = 32,
        max_length: int = 512,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .encoder import resolve_device

        self.name = os.fspath(model)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        local = Path(self.name).is_dir()
        offline = local or bool(os.environ.get("HF_HUB_OFFLINE"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.name, local_files_only=offline
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.name, local_files_only=offline
            )
        except OSError as exc:
            raise ModelNotFoundError(
                f"reranker model {self.name!r} is neither a local directory nor in the "
                "Hugging Face cache; pass a directory with a sequence-classification "
                "model, or run once with network access to cache it"
            ) from exc
        self.model.eval().to(self.device)
        limit = getattr(self.model.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, limit)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Return one relevance score per passage."""
        import numpy as np
        import torch

        scores: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(passages), self.batch_size):
                batch = list(passages[start : start + self.batch_size])
                encoded = self.tokenizer(
                    [query] * len(batch),
                    batch,
                    padding=True,
                    truncation="only_second",
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**encoded).logits.float()
                if logits.shape[-1] == 1:
                    values = torch.sigmoid(logits[:, 0])
                else:
                    values = torch.softmax(logits, dim=-1)[:, -1]
                scores.append(values.cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        """Return ``hits`` reordered by cross-encoder score, which replaces ``score``."""
        if not hits:
            return []
        scores = self.score(query, [hit.text for hit in hits])
        rescored = [
            replace(hit, score=float(s)) for hit, s in zip(hits, scores, strict=True)
        ]
        return sorted(rescored, key=lambda hit: (-hit.score, hit.id))
