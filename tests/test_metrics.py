"""Tests for semsearch.evaluate: BEIR loading and trec_eval-compatible metrics."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from semsearch.errors import ConfigError, LoadError
from semsearch.evaluate import evaluate_run, load_beir, per_query_metrics

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- hand-computed metrics -------------------------------------------------------

# Graded query: judged a=3, b=2, c=0, d=1. The run ranks a, x, b, c, d, so the
# gains by rank are 3, 0, 2, 0, 1 (x is unjudged, c is judged non-relevant).
GRADED_QRELS = {"q1": {"a": 3, "b": 2, "c": 0, "d": 1}}
GRADED_RUN = {"q1": {"a": 0.9, "x": 0.8, "b": 0.7, "c": 0.6, "d": 0.5}}


def test_ndcg_graded_gain_is_relevance() -> None:
    metrics = per_query_metrics(GRADED_QRELS, GRADED_RUN, k_values=(3, 5))["q1"]
    # DCG@3 = 3/log2(2) + 0/log2(3) + 2/log2(4) = 3 + 1 = 4
    # IDCG@3 over ideal gains 3, 2, 1 = 3 + 2/log2(3) + 1/log2(4)
    assert metrics["ndcg@3"] == pytest.approx(
        4 / (3 + 2 / math.log2(3) + 1 / math.log2(4))
    )
    # DCG@5 adds d at rank 5: 1/log2(6). IDCG@5 equals IDCG@3 (only 3 relevant).
    expected_5 = (4 + 1 / math.log2(6)) / (3 + 2 / math.log2(3) + 1 / math.log2(4))
    assert metrics["ndcg@5"] == pytest.approx(expected_5)


def test_recall_graded_counts_positive_only() -> None:
    metrics = per_query_metrics(GRADED_QRELS, GRADED_RUN, k_values=(3, 5))["q1"]
    # Relevant: a, b, d (c has relevance 0). The top 3 contains a and b.
    assert metrics["recall@3"] == pytest.approx(2 / 3)
    assert metrics["recall@5"] == pytest.approx(1.0)


def test_map_graded_divides_by_all_relevant() -> None:
    metrics = per_query_metrics(GRADED_QRELS, GRADED_RUN, k_values=(3, 5))["q1"]
    # Relevant ranks 1, 3, 5 have precision 1/1, 2/3, 3/5, and 3 docs are relevant.
    assert metrics["map@3"] == pytest.approx((1 + 2 / 3) / 3)
    assert metrics["map@5"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_mrr_graded_first_relevant_at_rank_one() -> None:
    metrics = per_query_metrics(GRADED_QRELS, GRADED_RUN, k_values=(3, 5))["q1"]
    assert metrics["mrr@3"] == pytest.approx(1.0)


def test_rank_ties_break_by_doc_id_descending() -> None:
    # Equal scores: trec_eval orders c, b, a, so the relevant b sits at rank 2.
    qrels = {"q": {"b": 1}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5}}
    metrics = per_query_metrics(qrels, run, k_values=(1, 10))["q"]
    assert metrics["mrr@10"] == pytest.approx(0.5)
    assert metrics["mrr@1"] == 0.0
    # DCG = 1/log2(3), IDCG = 1.
    assert metrics["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert metrics["map@10"] == pytest.approx(0.5)


def test_rank_ties_compare_ids_as_strings() -> None:
    # "9" > "10" as strings, so with equal scores "9" ranks first.
    qrels = {"q": {"10": 1}}
    run = {"q": {"10": 1.0, "9": 1.0}}
    metrics = per_query_metrics(qrels, run, k_values=(10,))["q"]
    assert metrics["mrr@10"] == pytest.approx(0.5)


def test_rank_ignores_run_mapping_order() -> None:
    # The run lists b first, but a has the higher score.
    qrels = {"q": {"a": 1}}
    run = {"q": {"b": 0.1, "a": 0.2}}
    metrics = per_query_metrics(qrels, run, k_values=(10,))["q"]
    assert metrics["mrr@10"] == pytest.approx(1.0)


def test_metrics_cutoff_excludes_later_ranks() -> None:
    # The only relevant doc sits at rank 11, behind ten non-relevant docs.
    run = {"q": {f"n{i:02d}": 1.0 - i / 100 for i in range(10)} | {"r": 0.0}}
    qrels = {"q": {"r": 1}}
    metrics = per_query_metrics(qrels, run, k_values=(10, 100))["q"]
    assert metrics["ndcg@10"] == 0.0
    assert metrics["recall@10"] == 0.0
    assert metrics["mrr@10"] == 0.0
    assert metrics["map@10"] == 0.0
    assert metrics["recall@100"] == pytest.approx(1.0)
    assert metrics["mrr@100"] == pytest.approx(1 / 11)
    assert metrics["map@100"] == pytest.approx(1 / 11)
    assert metrics["ndcg@100"] == pytest.approx(1 / math.log2(12))


def test_metrics_no_relevant_retrieved_scores_zero() -> None:
    qrels = {"q": {"r": 1}}
    run = {"q": {"x": 1.0, "y": 0.5}}
    metrics = per_query_metrics(qrels, run, k_values=(10,))["q"]
    assert metrics == {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "map@10": 0.0}


def test_metrics_query_without_relevant_docs_scores_zero() -> None:
    # Only relevance 0 and negative judgements: nothing is relevant.
    qrels = {"q": {"a": 0, "b": -1}}
    run = {"q": {"a": 1.0, "b": 0.9}}
    metrics = per_query_metrics(qrels, run, k_values=(10,))["q"]
    assert metrics == {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "map@10": 0.0}


def test_metrics_negative_relevance_is_non_relevant() -> None:
    # b (relevance -1) at rank 1 has gain 0, a at rank 2 has gain 1.
    qrels = {"q": {"a": 1, "b": -1}}
    run = {"q": {"b": 1.0, "a": 0.5}}
    metrics = per_query_metrics(qrels, run, k_values=(10,))["q"]
    assert metrics["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert metrics["recall@10"] == pytest.approx(1.0)


def test_evaluate_run_averages_over_qrels_queries() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    # q1: a at rank 1 (all metrics 1). q2: b at rank 2. q3: absent from the run.
    # "extra" is not judged and must not count.
    run = {
        "q1": {"a": 1.0},
        "q2": {"x": 1.0, "b": 0.5},
        "extra": {"a": 1.0},
    }
    result = evaluate_run(qrels, run, k_values=(10,))
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3)
    assert result["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert result["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result["map@10"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_evaluate_run_keys_follow_k_values() -> None:
    result = evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, k_values=(1, 5))
    expected = {
        f"{name}@{k}" for name in ("ndcg", "recall", "mrr", "map") for k in (1, 5)
    }
    assert set(result) == expected


def test_evaluate_run_default_keys() -> None:
    result = evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}})
    for key in ("ndcg@10", "recall@100", "mrr@10", "map@100"):
        assert key in result


def test_evaluate_run_drops_identical_ids_by_default() -> None:
    # Doc "q" equals the query id, so it is removed and d moves to rank 1.
    qrels = {"q": {"q": 1, "d": 1}}
    run = {"q": {"q": 2.0, "d": 1.0}}
    result = evaluate_run(qrels, run, k_values=(10,))
    assert result["recall@10"] == pytest.approx(0.5)
    assert result["mrr@10"] == pytest.approx(1.0)


def test_evaluate_run_keeps_identical_ids_when_asked() -> None:
    qrels = {"q": {"q": 1, "d": 1}}
    run = {"q": {"q": 2.0, "d": 1.0}}
    result = evaluate_run(qrels, run, k_values=(10,), ignore_identical_ids=False)
    assert result["recall@10"] == pytest.approx(1.0)


def test_evaluate_run_does_not_mutate_run() -> None:
    run = {"q": {"q": 2.0, "d": 1.0}}
    evaluate_run({"q": {"d": 1}}, run)
    assert run == {"q": {"q": 2.0, "d": 1.0}}


@pytest.mark.parametrize("k_values", [(), (0,), (10, -1), (2.5,), (True,)])
def test_evaluate_run_rejects_bad_k_values(k_values: tuple) -> None:
    with pytest.raises(ConfigError, match="k_values"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, k_values=k_values)


def test_evaluate_run_rejects_empty_qrels() -> None:
    with pytest.raises(ConfigError, match="qrels is empty"):
        evaluate_run({}, {"q": {"a": 1.0}})


def test_evaluate_run_rejects_nan_score() -> None:
    with pytest.raises(ConfigError, match="'a'.*NaN"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": math.nan}})


# --- comparison with pytrec_eval -----------------------------------------------


def random_collection(seed: int) -> tuple[dict, dict]:
    """Build graded qrels and a run with many tied scores, numeric-looking ids."""
    rng = random.Random(seed)
    docs = [str(i) for i in range(60)] + [f"d{i}" for i in range(20)]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(25):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 15))
        qrels[qid] = {doc: rng.choice([0, 0, 1, 1, 2, 3]) for doc in judged}
        retrieved = rng.sample(docs, rng.randint(0, 70))
        # One decimal place makes ties common, so tie-breaking is exercised.
        run[qid] = {doc: round(rng.uniform(-1, 1), 1) for doc in retrieved}
    return qrels, run


@pytest.mark.parametrize("seed", range(8))
def test_evaluate_run_matches_pytrec_eval(seed: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = random_collection(seed)
    k_values = (1, 3, 10, 100)
    measures = {
        "ndcg_cut.1,3,10,100",
        "recall.1,3,10,100",
        "map_cut.1,3,10,100",
        "recip_rank",
    }
    reference = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    ours = per_query_metrics(qrels, run, k_values=k_values)
    for qid, ref in reference.items():
        rank = 1 / ref["recip_rank"] if ref["recip_rank"] > 0 else math.inf
        for k in k_values:
            assert ours[qid][f"ndcg@{k}"] == pytest.approx(ref[f"ndcg_cut_{k}"]), qid
            assert ours[qid][f"recall@{k}"] == pytest.approx(ref[f"recall_{k}"]), qid
            assert ours[qid][f"map@{k}"] == pytest.approx(ref[f"map_cut_{k}"]), qid
            expected_mrr = ref["recip_rank"] if rank <= k else 0.0
            assert ours[qid][f"mrr@{k}"] == pytest.approx(expected_mrr), qid


def test_evaluate_run_pytrec_eval_covers_all_queries() -> None:
    # Guards the comparison above: pytrec_eval must score every judged query
    # that has a run entry, or the loop would skip them silently.
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = random_collection(0)
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    assert set(reference) == set(qrels)


# --- load_beir -------------------------------------------------------------------


def write_beir(root: Path, splits: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = [
        {"_id": "d2", "title": "Second", "text": "beta"},
        {"_id": "d1", "title": "First", "text": "alpha"},
        {"_id": "d3", "text": "no title"},
    ]
    queries = [
        {"_id": "q1", "text": "find alpha", "metadata": {}},
        {"_id": "q2", "text": "find beta"},
        {"_id": "q3", "text": "unjudged"},
    ]
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps(row) for row in corpus) + "\n", encoding="utf-8"
    )
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps(row) for row in queries) + "\n", encoding="utf-8"
    )
    (root / "qrels").mkdir(exist_ok=True)
    default = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"
    for split, text in (splits or {"test": default}).items():
        (root / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return root


def test_load_beir_reads_corpus_in_file_order(tmp_path: Path) -> None:
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    assert list(dataset.corpus) == ["d2", "d1", "d3"]
    assert dataset.corpus["d1"] == ("First", "alpha")
    assert dataset.corpus["d3"] == ("", "no title")


def test_load_beir_keeps_only_judged_queries(tmp_path: Path) -> None:
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    assert dataset.queries == {"q1": "find alpha", "q2": "find beta"}


def test_load_beir_parses_qrels(tmp_path: Path) -> None:
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    assert dataset.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}


def test_load_beir_names_dataset_after_folder(tmp_path: Path) -> None:
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    assert dataset.name == "tiny"


def test_load_beir_reads_other_split(tmp_path: Path) -> None:
    splits = {"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\n", "dev": "q3\td2\t1\n"}
    dataset = load_beir(write_beir(tmp_path / "tiny", splits), split="dev")
    assert dataset.qrels == {"q3": {"d2": 1}}


def test_load_beir_missing_split_lists_available(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny")
    with pytest.raises(ConfigError, match=r"'train'.*\['test'\]"):
        load_beir(root, split="train")


def test_load_beir_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        load_beir(tmp_path / "nowhere")


def test_load_beir_missing_corpus_file(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(ConfigError, match="corpus.jsonl"):
        load_beir(root)


def test_load_beir_invalid_json_names_line(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny")
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    with pytest.raises(LoadError, match=r"corpus\.jsonl:4: invalid JSON"):
        load_beir(root)


def test_load_beir_bad_relevance_names_line(tmp_path: Path) -> None:
    splits = {"test": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}
    root = write_beir(tmp_path / "tiny", splits)
    with pytest.raises(LoadError, match=r"test\.tsv:2: relevance 'high'"):
        load_beir(root)


def test_load_beir_unknown_query_id(tmp_path: Path) -> None:
    splits = {"test": "query-id\tcorpus-id\tscore\nq9\td1\t1\n"}
    root = write_beir(tmp_path / "tiny", splits)
    with pytest.raises(LoadError, match="'q9'"):
        load_beir(root)


def test_load_beir_scifact_counts() -> None:
    directory = DATA_DIR / "scifact"
    if not (directory / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact data not found at {directory}")
    dataset = load_beir(directory)
    assert len(dataset.corpus) == 5183
    assert len(dataset.queries) == 300
    assert sum(len(judged) for judged in dataset.qrels.values()) == 339
    assert len(dataset.qrels) == 300
