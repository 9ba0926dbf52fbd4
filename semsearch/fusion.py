"""Combine, diversify and group ranked hit lists.

Every function is pure: it returns new lists and never mutates its input. Hits are
keyed by ``Hit.id``. When fusion puts a hit into the output, it copies the first
``Hit`` object seen for that id (scanning the lists in order) and replaces only its
score. Fused lists are sorted by score descending, with equal scores ordered by id
ascending so that the output is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias

from .errors import ConfigError
from .types import Hit

if TYPE_CHECKING:
    import numpy as np

ScoreScale: TypeAlias = Literal["cosine", "unit"] | float
"""Mapping from one list's raw scores to [0, 1] in ``normalized_fusion``.

``"cosine"``: ``clip(s, 0, 1)``, for cosine similarity. ``"unit"``:
``clip(s, 0, 1)`` as well, for scores that are already probabilities.
A positive float ``c``: ``max(s, 0) / (max(s, 0) + c)``, for unbounded
non-negative scores such as BM25, where a raw score of ``c`` maps to 0.5.
"""

# Cosine scores computed in float32 can exceed 1 by a few ulps.
_COSINE_TOLERANCE = 1e-3

# One list's per-hit values (or fused scores), keyed by hit id.
_ListValues: TypeAlias = dict[str, float]


def reciprocal_rank_fusion(
    result_lists: Sequence[Sequence[Hit]],
    *,
    k: int = 60,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[Hit]:
    """Fuse ranked lists with weighted reciprocal rank fusion.

    The fused score of a hit is ``sum_i w_i / (k + rank_i)`` over the lists that
    contain it, with ``rank_i`` counted from 1. An id repeated within one list
    counts once, at its best rank. A hit that appears only in lists of weight 0 is
    dropped, so weights ``(1, 0)`` return the first list's order. Raises
    ConfigError for a negative ``k``, bad weights or a limit below 1.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(
            f"invalid RRF constant k={k!r}; use an integer >= 0, such as 60"
        )
    list_values = [
        _rank_values(hits, lambda rank: 1.0 / (k + rank)) for hits in result_lists
    ]
    fused = _weighted_sum(list_values, _check_weights(weights, len(result_lists)))
    return _build_output(result_lists, fused, _check_limit(limit))


def normalized_fusion(
    result_lists: Sequence[Sequence[Hit]],
    *,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
    method: Literal["calibrated", "rank", "minmax"] = "calibrated",
    scales: Sequence[ScoreScale] | None = None,
    k: int = 60,
) -> list[Hit]:
    """Fuse lists into scores in [0, 1] that can be compared with a fixed threshold.

    Each list ``i`` maps a hit to a value ``v_i`` in [0, 1], and the fused score is
    the weighted mean ``sum_i w_i * v_i / sum_i w_i``. A hit missing from list
    ``i`` has ``v_i = 0``. Because the weights are non-negative with a positive
    sum, the fused score is a convex combination of values in [0, 1] and so lies
    in [0, 1]. ``method`` chooses ``v_i``:

    - ``"calibrated"`` (default): ``v_i`` depends only on the hit's own raw score,
      mapped by ``scales[i]`` (see ``ScoreScale``). Hits from different queries
      share one scale, so a threshold such as 0.5 keeps its meaning. With
      ``scales=None`` every list is read as cosine similarity, and a score
      outside [-1, 1] raises ConfigError.
    - ``"rank"``: ``v_i = (k + 1) / (k + rank_i)``, which is reciprocal rank fusion
      rescaled so that a hit ranked first in every list scores 1.0. It ignores raw
      scores, so a threshold filters by rank agreement rather than relevance.
    - ``"minmax"``: ``v_i = (s - min_i) / (max_i - min_i)`` over the list's own
      scores, or 1.0 when they are all equal. The top hit of each list always gets
      1.0, so a threshold does not mean the same thing across queries.

    Every mapping is non-decreasing in the raw score (or in the rank order), so a
    hit never loses fused score by scoring higher in one list. As in
    ``reciprocal_rank_fusion``, an id repeated within a list counts once with its
    best value, and a hit found only in lists of weight 0 is dropped.
    """
    checked_weights = _check_weights(weights, len(result_lists))
    list_values = _normalized_values(result_lists, method, scales, k)
    fused = _weighted_sum(list_values, checked_weights)
    total_weight = sum(checked_weights)
    fused = {hit_id: min(score / total_weight, 1.0) for hit_id, score in fused.items()}
    return _build_output(result_lists, fused, _check_limit(limit))


def _normalized_values(
    result_lists: Sequence[Sequence[Hit]],
    method: str,
    scales: Sequence[ScoreScale] | None,
    k: int,
) -> list[_ListValues]:
    if method == "rank":
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"invalid rank constant k={k!r}; use an integer >= 0")
        return [
            _rank_values(hits, lambda rank: (k + 1) / (k + rank))
            for hits in result_lists
        ]
    if method == "minmax":
        return [_minmax_values(hits) for hits in result_lists]
    if method == "calibrated":
        checked = _check_scales(scales, len(result_lists))
        return [
            _calibrated_values(hits, scale)
            for hits, scale in zip(result_lists, checked, strict=True)
        ]
    raise ConfigError(
        f"invalid fusion method {method!r}; choose 'calibrated', 'rank' or 'minmax'"
    )


def _rank_values(hits: Sequence[Hit], value_at: Callable[[int], float]) -> _ListValues:
    values: _ListValues = {}
    for rank, hit in enumerate(hits, start=1):
        values.setdefault(hit.id, value_at(rank))
    return values


def _minmax_values(hits: Sequence[Hit]) -> _ListValues:
    scores = [_finite_score(hit) for hit in hits]
    if not scores:
        return {}
    low, high = min(scores), max(scores)
    values: _ListValues = {}
    for hit, score in zip(hits, scores, strict=True):
        value = (score - low) / (high - low) if high > low else 1.0
        values[hit.id] = max(values.get(hit.id, 0.0), value)
    return values


def _calibrated_values(hits: Sequence[Hit], scale: ScoreScale) -> _ListValues:
    values: _ListValues = {}
    for hit in hits:
        value = _calibrate(hit, scale)
        values[hit.id] = max(values.get(hit.id, 0.0), value)
    return values


def _calibrate(hit: Hit, scale: ScoreScale) -> float:
    score = _finite_score(hit, allow_infinite=not isinstance(scale, str))
    if scale == "cosine" and abs(score) > 1.0 + _COSINE_TOLERANCE:
        raise ConfigError(
            f"score {score!r} of hit {hit.id!r} is not a cosine similarity; pass "
            "scales=[...] with a saturation constant (a float) for unbounded scores"
        )
    if isinstance(scale, str):
        return min(max(score, 0.0), 1.0)
    positive = max(score, 0.0)
    if math.isinf(positive):
        return 1.0
    return positive / (positive + scale)


def _finite_score(hit: Hit, *, allow_infinite: bool = False) -> float:
    score = float(hit.score)
    if math.isnan(score) or (math.isinf(score) and not allow_infinite):
        raise ConfigError(
            f"score {hit.score!r} of hit {hit.id!r} is not finite; "
            "drop the hit or give it a finite score"
        )
    return score


def _check_scales(scales: Sequence[ScoreScale] | None, count: int) -> list[ScoreScale]:
    if scales is None:
        return ["cosine"] * count
    checked = list(scales)
    if len(checked) != count:
        raise ConfigError(
            f"got {len(checked)} scales for {count} result lists; pass one per list"
        )
    for scale in checked:
        if scale in ("cosine", "unit"):
            continue
        is_number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
        if not is_number or not math.isfinite(scale) or scale <= 0:
            raise ConfigError(
                f"invalid score scale {scale!r}; use 'cosine', 'unit' or a positive "
                "saturation constant such as 10.0"
            )
    return checked


def _check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    checked = [float(w) for w in weights]
    if len(checked) != count:
        raise ConfigError(
            f"got {len(checked)} weights for {count} result lists; pass one per list"
        )
    for weight in checked:
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"invalid weight {weight!r}; weights must be finite and >= 0"
            )
    if count and sum(checked) <= 0:
        raise ConfigError(
            f"weights {checked!r} sum to 0; give at least one list a weight > 0"
        )
    return checked


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"invalid limit {limit!r}; use a positive integer or None")
    return limit


def _weighted_sum(
    list_values: Sequence[_ListValues], weights: Sequence[float]
) -> _ListValues:
    """Sum ``w_i * v_i`` per id, leaving out ids found only in lists of weight 0."""
    fused: _ListValues = {}
    for values, weight in zip(list_values, weights, strict=True):
        if weight == 0:
            continue
        for hit_id, value in values.items():
            fused[hit_id] = fused.get(hit_id, 0.0) + weight * value
    return fused


def _build_output(
    result_lists: Sequence[Sequence[Hit]], fused: _ListValues, limit: int | None
) -> list[Hit]:
    first_seen: dict[str, Hit] = {}
    for hits in result_lists:
        for hit in hits:
            first_seen.setdefault(hit.id, hit)
    order = sorted(fused, key=lambda hit_id: (-fused[hit_id], hit_id))
    if limit is not None:
        order = order[:limit]
    return [
        dataclasses.replace(first_seen[hit_id], score=fused[hit_id]) for hit_id in order
    ]


def mmr(
    hits: Sequence[Hit],
    query_vector: np.ndarray,
    hit_vectors: np.ndarray,
    *,
    lambda_: float = 0.5,
    limit: int | None = None,
) -> list[Hit]:
    """Reorder hits by maximal marginal relevance.

    ``hit_vectors[i]`` is the embedding of ``hits[i]``. Vectors are L2-normalised
    first, and a zero vector stays zero, so its similarities are 0. Each step picks
    the hit that maximises ``lambda_ * cos(q, d) - (1 - lambda_) * max_s cos(d, s)``
    over the hits ``s`` already picked, where the second term is 0 for the first
    pick. Equal values go to the earlier input position. ``lambda_=1`` therefore
    returns the hits ordered by cosine similarity to the query, which is the input
    order for dense search results. Lower values demote near-duplicates of hits
    already picked. Hits are returned unchanged, scores included.
    """
    import numpy as np

    if isinstance(lambda_, bool) or not (0.0 <= float(lambda_) <= 1.0):
        raise ConfigError(f"invalid lambda_ {lambda_!r}; use a number in [0, 1]")
    checked_limit = _check_limit(limit)
    query, vectors = _check_vectors(len(hits), query_vector, hit_vectors)
    if not hits:
        return []

    relevance = vectors @ query
    similarity = vectors @ vectors.T
    redundancy = np.zeros(len(hits))
    available = np.ones(len(hits), dtype=bool)
    count = len(hits) if checked_limit is None else min(checked_limit, len(hits))
    picked: list[int] = []
    for _ in range(count):
        gain = lambda_ * relevance - (1.0 - lambda_) * redundancy
        index = int(np.argmax(np.where(available, gain, -np.inf)))
        picked.append(index)
        available[index] = False
        redundancy = np.maximum(redundancy, similarity[index])
    return [hits[index] for index in picked]


def _check_vectors(
    count: int, query_vector: np.ndarray, hit_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return L2-normalised float64 copies."""
    import numpy as np

    query = np.asarray(query_vector, dtype=np.float64)
    vectors = np.asarray(hit_vectors, dtype=np.float64)
    if query.ndim != 1:
        raise ConfigError(
            f"query_vector has shape {query.shape!r}; pass one 1-D vector"
        )
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise ConfigError(
            f"hit_vectors has shape {vectors.shape!r}; "
            f"pass one row per hit ({count} rows)"
        )
    if count and vectors.shape[1] != query.shape[0]:
        raise ConfigError(
            f"hit_vectors have dimension {vectors.shape[1]} but query_vector has "
            f"{query.shape[0]}; encode both with the same model"
        )
    if not (np.isfinite(query).all() and np.isfinite(vectors).all()):
        raise ConfigError("query_vector or hit_vectors contain NaN or infinity")
    return _unit_rows(query[None, :])[0], _unit_rows(vectors)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def group_by_document(hits: Sequence[Hit], *, limit: int | None = None) -> list[Hit]:
    """Keep the best-scoring hit of each ``doc_id``, ordered by score descending.

    Among hits of one document with equal scores, the earlier one is kept.
    Documents with equal best scores stay in the order in which each document
    first appears in ``hits``. ``limit`` caps the number of documents returned.
    """
    checked_limit = _check_limit(limit)
    best: dict[str, Hit] = {}
    for hit in hits:
        current = best.get(hit.doc_id)
        if current is None or hit.score > current.score:
            best[hit.doc_id] = hit
    ranked = sorted(best.values(), key=lambda hit: -hit.score)
    return ranked if checked_limit is None else ranked[:checked_limit]
