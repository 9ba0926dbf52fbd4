"""Paired significance tests and TREC run files behind `semsearch compare-runs`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from semsearch.cli import main
from semsearch.errors import ConfigError, LoadError
from semsearch.evaluate import (
    load_qrels,
    per_query_metrics,
    read_trec_run,
    write_trec_run,
)
from semsearch.significance import (
    compare_runs,
    compare_scores,
    describe,
    parse_metric,
)

from .test_eval_command import _write_beir


def _exact_sign_flip_p_value(differences: np.ndarray) -> float:
    observed = abs(differences.mean())
    extreme = 0
    total = 0
    for signs in itertools.product((1.0, -1.0), repeat=differences.size):
        total += 1
        if abs((differences * np.array(signs)).mean()) >= observed - 1e-12:
            extreme += 1
    return extreme / total


def test_compare_identical_scores():
    scores = [0.2, 0.5, 1.0, 0.0]
    result = compare_scores(scores, scores, trials=500)
    assert result.difference == 0.0
    assert result.p_value == 1.0
    assert result.ties == 4
    assert result.wins == 0
    assert result.losses == 0
    assert result.ci_low == 0.0
    assert result.ci_high == 0.0


def test_compare_matches_exact_enumeration():
    rng = np.random.default_rng(7)
    a = rng.random(12)
    b = a + rng.normal(0.08, 0.15, size=12)
    exact = _exact_sign_flip_p_value(b - a)
    result = compare_scores(a, b, trials=40_000, seed=1)
    # Monte Carlo standard error at p near 0.1 and 40,000 trials is about 0.0015.
    assert result.p_value == pytest.approx(exact, abs=0.006)


def test_compare_matches_scipy_permutation_test():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = rng.random(40)
    b = a + rng.normal(0.03, 0.1, size=40)
    reference = stats.permutation_test(
        (a, b),
        lambda x, y: np.mean(y - x),
        permutation_type="samples",
        n_resamples=40_000,
        random_state=0,
    )
    result = compare_scores(a, b, trials=40_000, seed=0)
    assert result.p_value == pytest.approx(reference.pvalue, abs=0.01)


def test_compare_clear_gain_is_significant():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = np.clip(a + 0.1 + rng.normal(0, 0.05, size=200), 0, None)
    result = compare_scores(a, b, trials=2_000)
    assert result.p_value < 0.001
    assert result.ci_low > 0
    assert result.ci_low < result.difference < result.ci_high
    assert result.wins > result.losses


def test_compare_counts_wins_losses_ties():
    result = compare_scores([0.5, 0.5, 0.1, 0.3], [0.7, 0.2, 0.1, 0.4], trials=200)
    assert (result.wins, result.losses, result.ties) == (2, 1, 1)
    assert result.mean_a == pytest.approx(0.35)
    assert result.mean_b == pytest.approx(0.35)


def test_compare_interval_matches_scipy_bootstrap():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    differences = rng.normal(0.02, 0.2, size=300)
    reference = stats.bootstrap(
        (differences,), np.mean, n_resamples=20_000, method="percentile", random_state=0
    )
    result = compare_scores(np.zeros(300), differences, trials=20_000)
    assert result.ci_low == pytest.approx(reference.confidence_interval.low, abs=0.003)
    assert result.ci_high == pytest.approx(reference.confidence_interval.high, abs=0.003)


def test_compare_same_seed_same_result():
    a = [0.1, 0.4, 0.9, 0.3, 0.6]
    b = [0.2, 0.3, 1.0, 0.5, 0.6]
    assert compare_scores(a, b, seed=4, trials=300) == compare_scores(
        a, b, seed=4, trials=300
    )


@pytest.mark.parametrize(
    ("a", "b", "options", "fragment"),
    [
        ([0.1, 0.2], [0.1], {}, "2 and 1 scores"),
        ([], [], {}, "no scores"),
        ([0.1, float("nan")], [0.1, 0.2], {}, "NaN"),
        ([0.1], [0.2], {"trials": 0}, "invalid trials 0"),
        ([0.1], [0.2], {"confidence": 1.0}, "invalid confidence 1.0"),
    ],
)
def test_compare_rejects_bad_input(a, b, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        compare_scores(a, b, **options)


def test_parse_metric_accepts_known_names():
    assert parse_metric("nDCG@10") == ("ndcg", 10)
    assert parse_metric("recall@100") == ("recall", 100)


@pytest.mark.parametrize(
    "metric", ["ndcg", "ndcg@0", "precision@10", "map@x", "ndcg@\u00b2", "ndcg@\u0661\u0660"]
)
def test_parse_metric_rejects(metric):
    with pytest.raises(ConfigError, match="invalid metric"):
        parse_metric(metric)


def test_compare_runs_scores_per_query():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    run_a = {"q1": {"d1": 0.9, "d2": 0.1}, "q2": {"d1": 0.8, "d2": 0.7}}
    run_b = {"q1": {"d1": 0.9}, "q2": {"d2": 0.8, "d1": 0.7}, "q3": {"d3": 0.5}}
    result = compare_runs(qrels, run_a, run_b, metric="mrr@10", trials=500)
    expected_a = per_query_metrics(qrels, run_a, k_values=[10])
    assert result.metric == "mrr@10"
    assert result.queries == 3
    assert result.mean_a == pytest.approx(
        sum(q["mrr@10"] for q in expected_a.values()) / 3
    )
    assert result.mean_a == pytest.approx((1 + 0.5 + 0) / 3)
    assert result.mean_b == pytest.approx(1.0)
    assert (result.wins, result.losses, result.ties) == (2, 0, 1)


def test_compare_runs_counts_missing_queries(caplog):
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    full = {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}}
    partial = {"q1": {"d1": 1.0}}
    result = compare_runs(qrels, full, partial, trials=200)
    assert result.missing_a == 0
    assert result.missing_b == 1
    assert result.mean_b == pytest.approx(0.5)
    assert "run B has no results for 1 of 2" in caplog.text


def test_compare_runs_rejects_other_dataset():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    other = {"x1": {"d1": 1.0}}
    with pytest.raises(ConfigError, match="none of the 2 judged queries"):
        compare_runs(qrels, qrels_run := {"q1": {"d1": 1.0}}, other, trials=200)
    assert qrels_run == {"q1": {"d1": 1.0}}


def test_compare_runs_accepts_empty_run():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    result = compare_runs(qrels, {"q1": {"d1": 1.0}}, {}, trials=200)
    assert result.mean_b == 0.0
    assert result.missing_b == 2


def test_trec_run_round_trip(tmp_path):
    run = {"q2": {"d1": 0.5, "d10": 0.75, "d9": 0.5}, "q1": {"x": -1.25}}
    path = tmp_path / "run.trec"
    write_trec_run(run, path, tag="dense")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "q1 Q0 x 1 -1.25 dense"
    # Equal scores rank by doc id descending, as trec_eval does.
    assert [line.split()[2] for line in lines[1:]] == ["d10", "d9", "d1"]
    assert [line.split()[3] for line in lines[1:]] == ["1", "2", "3"]
    assert read_trec_run(path) == run


def test_trec_run_keeps_float_precision(tmp_path):
    run = {"q": {"a": 0.1 + 0.2, "b": 1e-17}}
    path = tmp_path / "run.trec"
    write_trec_run(run, path)
    assert read_trec_run(path) == run


def test_trec_run_rejects_whitespace_ids(tmp_path):
    path = tmp_path / "run.trec"
    with pytest.raises(ConfigError, match="whitespace"):
        write_trec_run({"q 1": {"d": 1.0}}, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_trec_run_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "missing" / "run.trec"
    with pytest.raises(ConfigError, match="cannot write run file"):
        write_trec_run({"q": {"d": 1.0}}, target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "fragment", "line"),
    [
        ("q1 Q0 d1 1 0.5\n", "expected 6 fields", 1),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 high t\n", "'high' is not a number", 2),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", "listed twice", 2),
        ("q1 Q0 d1 1 nan t\n", "NaN", 1),
    ],
)
def test_read_trec_run_names_bad_line(tmp_path, content, fragment, line):
    path = tmp_path / "bad.trec"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LoadError, match=fragment) as caught:
        read_trec_run(path)
    assert caught.value.line == line


def test_read_trec_run_empty_file(tmp_path, caplog):
    path = tmp_path / "empty.trec"
    path.write_text("\n", encoding="utf-8")
    assert read_trec_run(path) == {}
    assert "has no results" in caplog.text


def test_read_trec_run_skips_bom(tmp_path):
    path = tmp_path / "bom.trec"
    path.write_bytes(b"\xef\xbb\xbfq1 Q0 d1 1 0.5 t\r\nq2 Q0 d2 1 0.25 t\r\n")
    assert read_trec_run(path) == {"q1": {"d1": 0.5}, "q2": {"d2": 0.25}}


def test_read_trec_run_invalid_utf8(tmp_path):
    path = tmp_path / "latin.trec"
    path.write_bytes(b"q1 Q0 d1 1 0.5 t\n\xff\xfe junk\n")
    with pytest.raises(LoadError, match="invalid UTF-8") as caught:
        read_trec_run(path)
    assert caught.value.line == 2


@pytest.mark.parametrize("name", ["", "folder", "folder/", "file.trec/run.trec"])
def test_write_trec_run_bad_path(tmp_path, name):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.trec").write_text("", encoding="utf-8")
    path = str(tmp_path / name) if name else ""
    with pytest.raises(ConfigError, match="run file"):
        write_trec_run({"q": {"d": 1.0}}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.trec", "folder"]
    assert list((tmp_path / "folder").iterdir()) == []


def test_write_trec_run_leftover_partial_directory(tmp_path):
    (tmp_path / ".run.trec.partial").mkdir()
    with pytest.raises(ConfigError, match="cannot write run file"):
        write_trec_run({"q": {"d": 1.0}}, tmp_path / "run.trec")
    assert not (tmp_path / "run.trec").exists()


def test_eval_save_run_then_compare(tmp_path):
    folder = _write_beir(tmp_path / "tiny")
    run_path = tmp_path / "dense.trec"
    runner = CliRunner()
    evaluated = runner.invoke(
        main,
        ["--uri", str(tmp_path / "cli.db"), "eval", str(folder), "--json",
         "--save-run", str(run_path)],
    )
    assert evaluated.exit_code == 0, evaluated.output
    saved = read_trec_run(run_path)
    assert set(saved) == {"q1", "q2", "q3"}
    assert max(saved["q1"], key=saved["q1"].get) == "d1"
    assert run_path.read_text(encoding="utf-8").split()[5] == "semsearch-dense"

    # A run that finds nothing for q1 loses that query and ties the others.
    worse = {query: dict(scores) for query, scores in saved.items()}
    worse["q1"] = {"d2": 1.0}
    worse_path = tmp_path / "worse.trec"
    write_trec_run(worse, worse_path)
    compared = runner.invoke(
        main,
        ["compare-runs", str(folder), str(run_path), str(worse_path), "--json",
         "--trials", "1000"],
    )
    assert compared.exit_code == 0, compared.output
    payload = json.loads(compared.stdout)
    assert payload["metric"] == "ndcg@10"
    assert payload["mean_a"] == pytest.approx(2 / 3)
    assert payload["mean_b"] == pytest.approx(1 / 3)
    assert payload["losses"] == 1
    assert payload["ties"] == 2

    text = runner.invoke(
        main, ["compare-runs", str(folder), str(run_path), str(run_path)]
    )
    assert text.exit_code == 0, text.output
    assert "p = 1.0000" in text.output


def test_eval_save_run_checks_path_first(tmp_path):
    folder = _write_beir(tmp_path / "tiny")
    database = tmp_path / "never.db"
    result = CliRunner().invoke(
        main,
        ["--uri", str(database), "eval", str(folder), "--save-run",
         str(tmp_path / "missing" / "run.trec")],
    )
    assert result.exit_code == 1
    assert "does not exist" in result.output
    # The check runs before the corpus is ingested.
    assert not database.exists()


def test_compare_runs_command_negative_seed(tmp_path):
    folder = _write_beir(tmp_path / "tiny")
    run_path = tmp_path / "run.trec"
    write_trec_run({"q1": {"d1": 1.0}}, run_path)
    result = CliRunner().invoke(
        main, ["compare-runs", str(folder), str(run_path), str(run_path), "--seed", "-1"]
    )
    assert result.exit_code == 2
    assert "--seed" in result.output


def test_compare_runs_command_bad_metric(tmp_path):
    folder = _write_beir(tmp_path / "tiny")
    run_path = Path(tmp_path / "run.trec")
    write_trec_run({"q1": {"d1": 1.0}}, run_path)
    result = CliRunner().invoke(
        main,
        ["compare-runs", str(folder), str(run_path), str(run_path), "--metric", "p@5"],
    )
    assert result.exit_code == 1
    assert "invalid metric 'p@5'" in result.output


def test_load_qrels_with_bom_and_bad_bytes(tmp_path):
    root = tmp_path / "set"
    (root / "qrels").mkdir(parents=True)
    qrels_path = root / "qrels" / "test.tsv"
    qrels_path.write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert load_qrels(root) == {"q1": {"d1": 1}}

    qrels_path.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td\xe9\t1\n")
    with pytest.raises(LoadError, match="invalid UTF-8") as caught:
        load_qrels(root)
    assert caught.value.line == 2

    qrels_path.write_text("query-id\tcorpus-id\tscore\n", encoding="utf-8")
    with pytest.raises(LoadError, match="no judgements"):
        load_qrels(root)


def test_describe_reports_level_and_missing():
    result = compare_runs(
        {"q1": {"d1": 1}, "q2": {"d2": 1}},
        {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}},
        {"q1": {"d1": 1.0}},
        trials=200,
        confidence=0.999,
    )
    text = describe(result)
    assert "99.9 % interval" in text
    assert "A 0, B 1" in text
