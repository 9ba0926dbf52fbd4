"""`semsearch eval` end to end on small BEIR folders with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from semsearch import SemanticSearch
from semsearch.benchmark import run_benchmark
from semsearch.cli import main
from semsearch.evaluate import evaluate_run, load_beir

CORPUS = {
    "d1": ("Lighthouses", "A lighthouse guides ships at night with a rotating beam."),
    "d2": ("Sourdough", "Sourdough bread rises with wild yeast and bacteria."),
    "d3": ("Volcanoes", "A volcano erupts when magma rises through the crust."),
    "d4": ("Glaciers", "Glaciers carve valleys as the ice slowly flows downhill."),
    "d5": ("Honeybees", "Honeybees communicate the location of flowers by dancing."),
}
QUERIES = {
    "q1": "how do ships navigate near the coast at night",
    "q2": "why do bees dance",
    "q3": "what makes a volcano erupt",
}
# q3's only relevant document is not in the corpus, so q3 scores 0 on every
# metric, and each mean is (1 + 1 + 0) / 3 when q1 and q2 find their document first.
QRELS = [("q1", "d1", 1), ("q2", "d5", 1), ("q3", "d-missing", 1)]


def _write_beir(root: Path) -> Path:
    root.mkdir()
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as out:
        for doc_id, (title, text) in CORPUS.items():
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as out:
        for query_id, text in QUERIES.items():
            out.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (root / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in QRELS]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_eval_hand_computed_metrics(tmp_path, encoder, mode):
    dataset = load_beir(_write_beir(tmp_path / "tiny"))
    with SemanticSearch(uri=str(tmp_path / "eval.db"), collection="tiny", encoder=encoder) as engine:
        result = run_benchmark(engine, dataset, split="test", mode=mode)
    assert result.queries == 3
    assert result.documents == 5
    for name in ("ndcg@10", "recall@100", "mrr@10", "map@100"):
        assert result.metrics[name] == pytest.approx(2 / 3), name


def test_eval_metrics_match_search_results(tmp_path, encoder):
    """The reported metrics equal those of the runs the public search API returns."""
    dataset = load_beir(_write_beir(tmp_path / "tiny"))
    qrels = {"q1": {"d1": 1, "d4": 1}, "q2": {"d5": 2, "d2": 1}, "q3": {"d3": 1}}
    dataset = type(dataset)(dataset.name, dataset.corpus, dataset.queries, qrels)
    with SemanticSearch(uri=str(tmp_path / "eval.db"), collection="tiny", encoder=encoder) as engine:
        result = run_benchmark(engine, dataset, split="test", mode="dense")
        run = {
            query_id: {hit.doc_id: hit.score for hit in engine.search(text, k=100, group_by_doc=True)}
            for query_id, text in dataset.queries.items()
        }
    expected = evaluate_run(qrels, run, k_values=(10, 100))
    assert result.metrics == pytest.approx(expected)


def test_eval_rerun_embeds_nothing(tmp_path, encoder):
    dataset = load_beir(_write_beir(tmp_path / "tiny"))
    with SemanticSearch(uri=str(tmp_path / "eval.db"), collection="tiny", encoder=encoder) as engine:
        run_benchmark(engine, dataset, split="test")
        report = engine.ingest_documents(
            __import__("semsearch.benchmark", fromlist=["beir_documents"]).beir_documents(dataset)
        )
    assert report.unchanged == 5
    assert report.chunks == 0


def test_eval_same_name_replaces_corpus(tmp_path, encoder, caplog):
    (tmp_path / "a").mkdir()
    first = load_beir(_write_beir(tmp_path / "a" / "beir"))
    other = tmp_path / "b" / "beir"
    other.mkdir(parents=True)
    second_corpus = {"d1": CORPUS["d1"], "d5": CORPUS["d5"]}
    second_corpus["e1"] = ("Tides", "The moon pulls the oceans and causes the tides.")
    with open(other / "corpus.jsonl", "w", encoding="utf-8") as out:
        for doc_id, (title, text) in second_corpus.items():
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    for name in ("queries.jsonl", "qrels"):
        (other / name).symlink_to(tmp_path / "a" / "beir" / name)
    second = load_beir(other)
    assert first.name == second.name == "beir"

    with SemanticSearch(uri=str(tmp_path / "eval.db"), collection="eval_beir", encoder=encoder) as engine:
        run_benchmark(engine, first, split="test")
        with caplog.at_level("INFO", logger="semsearch.benchmark"):
            result = run_benchmark(engine, second, split="test")
        stored = sorted(document.doc_id for document in engine.store.documents())
    assert stored == ["d1", "d5", "e1"]
    assert result.documents == 3
    assert result.chunks == 3
    assert "removed 3 stored documents" in caplog.text


def test_eval_command_json(tmp_path):
    folder = _write_beir(tmp_path / "tiny")
    result = CliRunner().invoke(
        main,
        ["--uri", str(tmp_path / "cli.db"), "eval", str(folder), "--json", "--ann-recall"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["dataset"] == "tiny"
    assert payload["metrics"]["ndcg@10"] == pytest.approx(2 / 3, abs=1e-4)
    assert payload["ann_recall@10"] == pytest.approx(1.0)


def test_eval_command_missing_split(tmp_path):
    folder = _write_beir(tmp_path / "tiny")
    result = CliRunner().invoke(
        main, ["--uri", str(tmp_path / "cli.db"), "eval", str(folder), "--split", "dev"]
    )
    assert result.exit_code == 1
    assert "dev" in result.output
    assert "test" in result.output
