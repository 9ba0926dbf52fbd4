"""Tests for semsearch.fusion: rank fusion, normalized fusion, MMR and grouping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semsearch.errors import ConfigError
from semsearch.fusion import (
    group_by_document,
    mmr,
    normalized_fusion,
    reciprocal_rank_fusion,
)
from semsearch.types import Hit


def make_hit(
    hit_id: str, score: float = 0.0, doc_id: str | None = None, text: str = ""
) -> Hit:
    return Hit(
        id=hit_id,
        score=score,
        text=text or f"text of {hit_id}",
        doc_id=doc_id or hit_id,
        chunk=0,
        start=0,
        end=len(text),
        source=f"{hit_id}.txt",
        title=hit_id,
    )


def ids(hits: list[Hit]) -> list[str]:
    return [hit.id for hit in hits]


def ranked_list(hit_ids: list[str], top: float = 1.0) -> list[Hit]:
    """Hits in the given order, with strictly decreasing scores in (0, top]."""
    return [
        make_hit(hit_id, top * (len(hit_ids) - i) / len(hit_ids))
        for i, hit_id in enumerate(hit_ids)
    ]


unique_ids = st.lists(
    st.sampled_from([f"h{i}" for i in range(12)]), unique=True, min_size=1
)
positive_weight = st.floats(min_value=0.01, max_value=10.0)


# --- reciprocal_rank_fusion ------------------------------------------------------


def test_rrf_hand_computed_scores() -> None:
    first = ranked_list(["a", "b", "c"])
    second = ranked_list(["b", "d"])
    fused = reciprocal_rank_fusion([first, second], k=60)
    # a: 1/61, b: 1/62 + 1/61, c: 1/63, d: 1/62
    assert ids(fused) == ["b", "a", "d", "c"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[3].score == pytest.approx(1 / 63)


def test_rrf_weights_change_order() -> None:
    first = ranked_list(["a", "b", "c"])
    second = ranked_list(["b", "d"])
    fused = reciprocal_rank_fusion([first, second], k=60, weights=[2.0, 1.0])
    # a: 2/61 = 0.0328, b: 2/62 + 1/61 = 0.0487, c: 2/63 = 0.0317, d: 1/62 = 0.0161
    assert ids(fused) == ["b", "a", "c", "d"]
    assert fused[0].score == pytest.approx(2 / 62 + 1 / 61)


def test_rrf_ties_ordered_by_id() -> None:
    fused = reciprocal_rank_fusion([[make_hit("y")], [make_hit("x")]])
    assert ids(fused) == ["x", "y"]


def test_rrf_keeps_first_seen_fields() -> None:
    first = [make_hit("a", 0.9, text="from dense")]
    second = [make_hit("a", 12.0, text="from sparse")]
    fused = reciprocal_rank_fusion([first, second], k=60)
    assert fused[0].text == "from dense"
    assert fused[0].score == pytest.approx(2 / 61)


def test_rrf_does_not_mutate_input() -> None:
    first = ranked_list(["a", "b"])
    reciprocal_rank_fusion([first])
    assert first[0].score == 1.0


def test_rrf_duplicate_in_list_counts_best_rank() -> None:
    fused = reciprocal_rank_fusion([[make_hit("a"), make_hit("b"), make_hit("a")]], k=0)
    assert fused[0].score == pytest.approx(1.0)
    assert fused[1].score == pytest.approx(0.5)


def test_rrf_limit_truncates() -> None:
    fused = reciprocal_rank_fusion([ranked_list(["a", "b", "c"])], limit=2)
    assert ids(fused) == ["a", "b"]


def test_rrf_empty_input_returns_empty() -> None:
    assert reciprocal_rank_fusion([]) == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"k": -1}, "k=-1"),
        ({"weights": [1.0]}, "1 weights for 2"),
        ({"weights": [1.0, -0.5]}, "-0.5"),
        ({"weights": [0.0, 0.0]}, "sum to 0"),
        ({"weights": [1.0, math.nan]}, "nan"),
        ({"limit": 0}, "limit 0"),
    ],
)
def test_rrf_rejects_bad_options(options: dict, match: str) -> None:
    lists = [ranked_list(["a"]), ranked_list(["b"])]
    with pytest.raises(ConfigError, match=match):
        reciprocal_rank_fusion(lists, **options)


@given(unique_ids)
def test_rrf_single_list_preserves_order(hit_ids: list[str]) -> None:
    fused = reciprocal_rank_fusion([ranked_list(hit_ids)])
    assert ids(fused) == hit_ids


@given(unique_ids, unique_ids, positive_weight, positive_weight)
def test_rrf_first_in_both_lists_ends_first(
    first_ids: list[str], second_ids: list[str], w1: float, w2: float
) -> None:
    second_ids = ["top"] + [i for i in second_ids if i != "top"]
    first_ids = ["top"] + first_ids
    fused = reciprocal_rank_fusion(
        [ranked_list(first_ids), ranked_list(second_ids)], weights=[w1, w2]
    )
    assert fused[0].id == "top"


@given(unique_ids, unique_ids)
def test_rrf_weights_one_zero_reproduce_first_list(
    first_ids: list[str], second_ids: list[str]
) -> None:
    fused = reciprocal_rank_fusion(
        [ranked_list(first_ids), ranked_list(second_ids)], weights=[1.0, 0.0]
    )
    assert ids(fused) == first_ids


# --- normalized_fusion -----------------------------------------------------------


def test_normalized_calibrated_hand_computed() -> None:
    dense = [make_hit("a", 0.8), make_hit("b", 0.4)]
    sparse = [make_hit("b", 30.0), make_hit("c", 10.0)]
    fused = normalized_fusion([dense, sparse], scales=["cosine", 10.0])
    # a: (0.8 + 0) / 2 = 0.4
    # b: (0.4 + 30 / (30 + 10)) / 2 = (0.4 + 0.75) / 2 = 0.575
    # c: (0 + 10 / (10 + 10)) / 2 = 0.25
    assert ids(fused) == ["b", "a", "c"]
    assert [hit.score for hit in fused] == pytest.approx([0.575, 0.4, 0.25])


def test_normalized_calibrated_weighted_mean() -> None:
    dense = [make_hit("a", 0.8)]
    sparse = [make_hit("a", 10.0)]
    fused = normalized_fusion(
        [dense, sparse], scales=["cosine", 10.0], weights=[3.0, 1.0]
    )
    # (3 * 0.8 + 1 * 0.5) / 4 = 0.725
    assert fused[0].score == pytest.approx(0.725)


def test_normalized_calibrated_ignores_other_hits() -> None:
    alone = normalized_fusion([[make_hit("a", 0.6)]])
    crowded = normalized_fusion(
        [[make_hit("b", 0.95), make_hit("a", 0.6), make_hit("c", 0.1)]]
    )
    by_id = {hit.id: hit.score for hit in crowded}
    assert by_id["a"] == pytest.approx(alone[0].score)


def test_normalized_calibrated_top_hit_not_forced_to_one() -> None:
    fused = normalized_fusion([[make_hit("a", 0.3)]])
    assert fused[0].score == pytest.approx(0.3)


def test_normalized_cosine_clips_negative_to_zero() -> None:
    fused = normalized_fusion([[make_hit("a", -0.4)]])
    assert fused[0].score == 0.0


def test_normalized_unit_scale_clips() -> None:
    fused = normalized_fusion(
        [[make_hit("a", 1.5), make_hit("b", 0.2)]], scales=["unit"]
    )
    assert [hit.score for hit in fused] == pytest.approx([1.0, 0.2])


def test_normalized_saturation_infinite_score_is_one() -> None:
    fused = normalized_fusion([[make_hit("a", math.inf)]], scales=[5.0])
    assert fused[0].score == 1.0


def test_normalized_default_scale_rejects_unbounded_scores() -> None:
    with pytest.raises(ConfigError, match="3.0 of hit 'a' is not a cosine"):
        normalized_fusion([[make_hit("a", 3.0)]])


def test_normalized_rank_hand_computed() -> None:
    first = ranked_list(["a", "b"])
    second = ranked_list(["b", "c"])
    fused = normalized_fusion([first, second], method="rank", k=60)
    # a: (61/61 + 0) / 2 = 0.5, b: (61/62 + 61/61) / 2, c: (0 + 61/62) / 2
    assert ids(fused) == ["b", "a", "c"]
    assert fused[0].score == pytest.approx((61 / 62 + 1) / 2)
    assert fused[2].score == pytest.approx(61 / 62 / 2)


def test_normalized_rank_first_everywhere_scores_one() -> None:
    fused = normalized_fusion(
        [ranked_list(["a", "b"]), ranked_list(["a"])], method="rank"
    )
    assert fused[0].score == 1.0


def test_normalized_minmax_hand_computed() -> None:
    hits = [make_hit("a", 5.0), make_hit("b", 3.0), make_hit("c", 1.0)]
    fused = normalized_fusion([hits], method="minmax")
    assert [hit.score for hit in fused] == pytest.approx([1.0, 0.5, 0.0])


def test_normalized_minmax_equal_scores_give_one() -> None:
    fused = normalized_fusion(
        [[make_hit("a", 0.2), make_hit("b", 0.2)]], method="minmax"
    )
    assert [hit.score for hit in fused] == [1.0, 1.0]


def test_normalized_weights_one_zero_drop_second_only() -> None:
    first = ranked_list(["a", "b"], top=0.9)
    second = ranked_list(["c", "a"], top=0.9)
    fused = normalized_fusion([first, second], weights=[1.0, 0.0])
    assert ids(fused) == ["a", "b"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "zscore"}, "'zscore'"),
        ({"scales": ["cosine"]}, "1 scales for 2"),
        ({"scales": ["cosine", "bm25"]}, "'bm25'"),
        ({"scales": ["cosine", -2.0]}, "-2.0"),
        ({"scales": ["cosine", math.inf]}, "inf"),
        ({"weights": [1.0, -1.0]}, "-1.0"),
        ({"limit": -3}, "limit -3"),
        ({"method": "rank", "k": -5}, "k=-5"),
    ],
)
def test_normalized_rejects_bad_options(options: dict, match: str) -> None:
    lists = [ranked_list(["a"]), ranked_list(["b"])]
    with pytest.raises(ConfigError, match=match):
        normalized_fusion(lists, **options)


def test_normalized_rejects_nan_score() -> None:
    with pytest.raises(ConfigError, match="hit 'a' is not finite"):
        normalized_fusion([[make_hit("a", math.nan)]], method="minmax")


cosine = st.floats(min_value=-1.0, max_value=1.0)
raw_score = st.floats(min_value=-1e6, max_value=1e6)
scored_list = st.lists(
    st.tuples(st.sampled_from([f"h{i}" for i in range(8)]), raw_score), max_size=8
)
cosine_list = st.lists(
    st.tuples(st.sampled_from([f"h{i}" for i in range(8)]), cosine), max_size=8
)
weights_pair = st.tuples(
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.01, max_value=100.0),
)


def to_hits(pairs: list[tuple[str, float]]) -> list[Hit]:
    return [make_hit(hit_id, score) for hit_id, score in pairs]


@given(cosine_list, scored_list, weights_pair, st.floats(min_value=0.01, max_value=1e3))
def test_normalized_calibrated_bounds(
    dense: list, sparse: list, weights: tuple[float, float], saturation: float
) -> None:
    fused = normalized_fusion(
        [to_hits(dense), to_hits(sparse)],
        scales=["cosine", saturation],
        weights=weights,
    )
    for hit in fused:
        assert 0.0 <= hit.score <= 1.0


@given(scored_list, scored_list, weights_pair, st.sampled_from(["rank", "minmax"]))
def test_normalized_rank_and_minmax_bounds(
    first: list, second: list, weights: tuple[float, float], method: str
) -> None:
    fused = normalized_fusion(
        [to_hits(first), to_hits(second)], weights=weights, method=method
    )
    for hit in fused:
        assert 0.0 <= hit.score <= 1.0


@given(
    cosine_list, scored_list, cosine, st.floats(min_value=0.0, max_value=2.0), raw_score
)
def test_normalized_calibrated_monotone_in_score(
    dense: list, sparse: list, low: float, raise_by: float, sparse_score: float
) -> None:
    # Raising the dense score of "target" never lowers its fused score.
    high = min(low + raise_by, 1.0)
    sparse_hits = to_hits(sparse + [("target", sparse_score)])

    def fused_target(score: float) -> float:
        dense_hits = to_hits(
            [("target", score)] + [p for p in dense if p[0] != "target"]
        )
        fused = normalized_fusion([dense_hits, sparse_hits], scales=["cosine", 10.0])
        return next(hit.score for hit in fused if hit.id == "target")

    assert fused_target(high) >= fused_target(low)


@given(scored_list, raw_score, st.floats(min_value=0.0, max_value=1e6))
def test_normalized_minmax_monotone_in_score(
    others: list, low: float, raise_by: float
) -> None:
    def fused_target(score: float) -> float:
        hits = to_hits([("target", score)] + [p for p in others if p[0] != "target"])
        fused = normalized_fusion([hits], method="minmax")
        return next(hit.score for hit in fused if hit.id == "target")

    assert fused_target(low + raise_by) >= fused_target(low)


@given(
    st.lists(cosine, min_size=1, max_size=6),
    st.lists(cosine, min_size=1, max_size=6),
    weights_pair,
)
def test_normalized_first_in_both_lists_scores_max(
    dense_scores: list[float], other_scores: list[float], weights: tuple[float, float]
) -> None:
    dense = [("top", max(dense_scores))] + [
        (f"d{i}", s) for i, s in enumerate(dense_scores)
    ]
    other = [("top", max(other_scores))] + [
        (f"o{i}", s) for i, s in enumerate(other_scores)
    ]
    fused = normalized_fusion(
        [to_hits(dense), to_hits(other)], weights=weights, scales=["cosine", "unit"]
    )
    top = next(hit.score for hit in fused if hit.id == "top")
    assert top == max(hit.score for hit in fused)


@given(unique_ids)
def test_normalized_weights_one_zero_keep_first_order(hit_ids: list[str]) -> None:
    first = ranked_list(hit_ids, top=0.9)
    second = ranked_list(list(reversed(hit_ids)), top=0.9)
    fused = normalized_fusion([first, second], weights=[1.0, 0.0])
    assert ids(fused) == hit_ids


# --- mmr -------------------------------------------------------------------------


def test_mmr_lambda_one_keeps_relevance_order() -> None:
    hits = [make_hit(name) for name in "abc"]
    query = np.array([1.0, 0.0])
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5]])
    assert ids(mmr(hits, query, vectors, lambda_=1.0)) == ["a", "b", "c"]


def test_mmr_duplicate_demoted_at_half_lambda() -> None:
    # a and a2 are identical, cos(q, a) = 0.9 and cos(q, b) = 0.5, cos(a, b) = 0.1.
    # Step 2 at lambda 0.5: a2 gains 0.45 - 0.5 * 1.0 = -0.05, b gains
    # 0.25 - 0.5 * 0.1 = 0.2, so b comes second.
    a = np.array([0.9, math.sqrt(1 - 0.81), 0.0])
    b_vector = _vector_with_cosines(a, 0.5, 0.1)
    hits = [make_hit("a"), make_hit("a2"), make_hit("b")]
    vectors = np.stack([a, a, b_vector])
    query = np.array([1.0, 0.0, 0.0])
    assert ids(mmr(hits, query, vectors, lambda_=0.5)) == ["a", "b", "a2"]


def _vector_with_cosines(a: np.ndarray, with_query: float, with_a: float) -> np.ndarray:
    """Build a unit vector v with v[0] = with_query and v . a = with_a."""
    y = (with_a - a[0] * with_query) / a[1]
    z = math.sqrt(1 - with_query**2 - y**2)
    return np.array([with_query, y, z])


def test_mmr_lambda_zero_picks_least_similar() -> None:
    # All gains are 0 at step 1, so the first input wins. Then h2 (cos 0 with
    # h0) beats h1 (cos 0.8 with h0).
    hits = [make_hit("h0"), make_hit("h1"), make_hit("h2")]
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    query = np.array([1.0, 0.0])
    assert ids(mmr(hits, query, vectors, lambda_=0.0)) == ["h0", "h2", "h1"]


def test_mmr_normalizes_vectors() -> None:
    hits = [make_hit("h0"), make_hit("h1"), make_hit("h2")]
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]) * np.array(
        [[5.0], [0.1], [3.0]]
    )
    query = np.array([7.0, 0.0])
    assert ids(mmr(hits, query, vectors, lambda_=0.0)) == ["h0", "h2", "h1"]


def test_mmr_returns_hits_unchanged() -> None:
    hits = [make_hit("a", 0.7), make_hit("b", 0.6)]
    result = mmr(hits, np.array([1.0, 0.0]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert result[0] is hits[0]


def test_mmr_limit_truncates() -> None:
    hits = [make_hit(name) for name in "abc"]
    vectors = np.eye(3)
    result = mmr(hits, np.array([1.0, 0.5, 0.2]), vectors, limit=2)
    assert ids(result) == ["a", "b"]


def test_mmr_zero_vector_has_zero_similarity() -> None:
    hits = [make_hit("zero"), make_hit("real")]
    vectors = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert ids(mmr(hits, np.array([1.0, 0.0]), vectors, lambda_=1.0)) == [
        "real",
        "zero",
    ]


def test_mmr_empty_hits() -> None:
    assert mmr([], np.array([1.0, 0.0]), np.zeros((0, 2))) == []


@pytest.mark.parametrize("lambda_", [-0.1, 1.5, math.nan])
def test_mmr_rejects_lambda_out_of_range(lambda_: float) -> None:
    hits = [make_hit("a")]
    with pytest.raises(ConfigError, match="lambda_"):
        mmr(hits, np.array([1.0]), np.array([[1.0]]), lambda_=lambda_)


@pytest.mark.parametrize(
    ("query", "vectors", "match"),
    [
        (np.ones((1, 2)), np.ones((2, 2)), "query_vector has shape"),
        (np.ones(2), np.ones((3, 2)), "2 rows"),
        (np.ones(3), np.ones((2, 2)), "dimension 2"),
        (np.array([1.0, math.nan]), np.ones((2, 2)), "NaN"),
    ],
)
def test_mmr_rejects_bad_vectors(
    query: np.ndarray, vectors: np.ndarray, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        mmr([make_hit("a"), make_hit("b")], query, vectors)


@settings(max_examples=50)
@given(
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_mmr_lambda_one_equals_input_order(count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    query = rng.normal(size=8)
    vectors = rng.normal(size=(count, 8))
    cosines = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    order = np.argsort(-cosines, kind="stable")
    hits = [make_hit(f"h{i}") for i in range(count)]
    result = mmr(hits, query, vectors[order], lambda_=1.0)
    assert ids(result) == ids(hits)


# --- group_by_document -----------------------------------------------------------


def test_group_by_document_keeps_best_chunk() -> None:
    hits = [
        make_hit("a#0", 0.5, doc_id="a"),
        make_hit("b#0", 0.7, doc_id="b"),
        make_hit("a#1", 0.9, doc_id="a"),
    ]
    assert ids(group_by_document(hits)) == ["a#1", "b#0"]


def test_group_by_document_limit_counts_documents() -> None:
    hits = [
        make_hit("a#0", 0.9, doc_id="a"),
        make_hit("a#1", 0.8, doc_id="a"),
        make_hit("b#0", 0.7, doc_id="b"),
    ]
    assert ids(group_by_document(hits, limit=1)) == ["a#0"]


def test_group_by_document_tie_keeps_earlier_chunk() -> None:
    hits = [make_hit("a#0", 0.5, doc_id="a"), make_hit("a#1", 0.5, doc_id="a")]
    assert ids(group_by_document(hits)) == ["a#0"]


def test_group_by_document_rejects_bad_limit() -> None:
    with pytest.raises(ConfigError, match="limit 0"):
        group_by_document([make_hit("a")], limit=0)


@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.floats(min_value=-10, max_value=10))
    )
)
def test_group_by_document_keeps_max_per_doc(pairs: list[tuple[str, float]]) -> None:
    hits = [
        make_hit(f"{doc}#{i}", score, doc_id=doc)
        for i, (doc, score) in enumerate(pairs)
    ]
    grouped = group_by_document(hits)
    best = {}
    for doc, score in pairs:
        best[doc] = max(best.get(doc, -math.inf), score)
    assert {hit.doc_id: hit.score for hit in grouped} == best
    assert len(grouped) == len(best)
    assert [hit.score for hit in grouped] == sorted(best.values(), reverse=True)
