"""An ingest killed mid-write is finished by the next run, with nothing lost or doubled.

The command runs in its own process group on a Milvus Lite file, and SIGKILL goes
to the whole group, so the embedded Milvus Lite server dies with it, as in a crash.
One test kills at a fixed point (after two written batches); the other kills at
random moments, whatever the process is doing then. SEMSEARCH_CRASH_SEED repeats
a random run; a failure message names the seed it used.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from semsearch.store import MilvusStore

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
# Written batches to wait for before the kill; each holds about 256 chunks, and
# the corpus makes about four of them.
WRITES_BEFORE_KILL = 2
SPEECHES = 6
# Kills that must land while the ingest is running, at random moments.
RANDOM_KILLS = 5
# The log line printed when imports and model loading are over and syncing begins.
SYNC_STARTED = "syncing into collection"
FIELDS = ["id", "doc_id", "text", "ordinal", "chunk_count", "doc_hash", "chunk_hash"]

pytestmark = pytest.mark.slow


def _command(db: str, collection: str, corpus: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "semsearch.cli", "-v", "--uri", db,
        "--collection", collection, "ingest", str(corpus),
        "--chunk-size", "64", "--json", *extra,
    ]  # fmt: skip


def _environment() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")


def _start(command: list[str]) -> subprocess.Popen[str]:
    """Start ``command`` in its own process group, reading its stderr as text."""
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
        start_new_session=True,
    )


def _run_and_kill(command: list[str]) -> int:
    """Start ``command``, SIGKILL it after some written batches; return how many."""
    process = _start(command)
    writes = 0
    try:
        for line in process.stderr:
            if "wrote" in line and "rows of" in line:
                writes += 1
                if writes >= WRITES_BEFORE_KILL:
                    os.killpg(process.pid, signal.SIGKILL)
                    break
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        process.stderr.close()
    return writes


def _run(command: list[str]) -> dict:
    result = subprocess.run(
        command,
        capture_output=True,
        check=False,
        text=True,
        env=_environment(),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _rows(db: str, collection: str) -> list[dict]:
    with MilvusStore(db, collection) as store:
        store.require()
        return store.query("", [*FIELDS, "vector"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("speeches")
    for path in sorted((SAMPLES / "txt").glob("sotu-19*.txt"))[:SPEECHES]:
        shutil.copy(path, folder / path.name)
    return folder


def test_ingest_killed_then_resumed_matches_clean_run(tmp_path, corpus):
    db = str(tmp_path / "crash.db")
    writes = _run_and_kill(_command(db, "resumed", corpus))
    resumed = _run(_command(db, "resumed", corpus))
    clean = _run(_command(db, "clean", corpus))

    resumed_rows = _rows(db, "resumed")
    clean_rows = _rows(db, "clean")

    def by_id(rows: list[dict]) -> dict[str, dict]:
        return {row["id"]: {key: row[key] for key in FIELDS} for row in rows}

    assert writes >= 1, "the first run finished no batch before the kill"
    assert resumed["documents"] == clean["documents"]
    assert resumed["unchanged"] > 0
    assert resumed["embedded"] < clean["embedded"]
    assert len(resumed_rows) == len(clean_rows)
    assert by_id(resumed_rows) == by_id(clean_rows)

    ordinals: dict[str, list[int]] = defaultdict(list)
    for row in resumed_rows:
        ordinals[row["doc_id"]].append(row["ordinal"])
    counts = {row["doc_id"]: row["chunk_count"] for row in resumed_rows}
    for doc_id, found in ordinals.items():
        assert sorted(found) == list(range(counts[doc_id])), doc_id
    assert sorted(ordinals) == sorted(path.name for path in corpus.iterdir())

    resumed_vectors = {row["id"]: row["vector"] for row in resumed_rows}
    for row in clean_rows:
        assert np.allclose(resumed_vectors[row["id"]], row["vector"], atol=1e-4)


def _run_until_killed(command: list[str], delay: float) -> tuple[bool, int, float]:
    """Start ``command`` and SIGKILL it ``delay`` seconds after syncing starts.

    Returns whether the kill landed (the process was still running), how many
    batches it had written by then, and the seconds it spent syncing.
    """
    process = _start(command)
    writes = 0
    syncing = None
    try:
        os.set_blocking(process.stderr.fileno(), False)
        while True:
            for line in process.stderr.readlines():
                if SYNC_STARTED in line and syncing is None:
                    syncing = time.monotonic()
                if "wrote" in line and "rows of" in line:
                    writes += 1
            if process.poll() is not None:
                assert process.returncode == 0, f"ingest exited {process.returncode}"
                elapsed = time.monotonic() - (syncing or time.monotonic())
                return False, writes, elapsed
            if syncing is not None and time.monotonic() - syncing >= delay:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=60)
                return True, writes, time.monotonic() - syncing
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        process.stderr.close()


def _rows_by_id(db: str, collection: str) -> dict[str, dict]:
    return {row["id"]: row for row in _rows(db, collection)}


def _assert_same_rows(found: dict[str, dict], expected: dict[str, dict], context: str):
    """Equal fields row for row; vectors equal up to float noise of batching."""
    assert found.keys() == expected.keys(), context
    for key, row in expected.items():
        assert {f: found[key][f] for f in FIELDS} == {f: row[f] for f in FIELDS}, (
            f"{key}; {context}"
        )
        assert np.allclose(found[key]["vector"], row["vector"], atol=1e-4), context


def test_ingest_killed_at_random_moments_matches_clean_run(tmp_path, corpus):
    seed = int(os.environ.get("SEMSEARCH_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    db = str(tmp_path / "crashes.db")
    _, _, sync_seconds = _run_until_killed(_command(db, "clean", corpus), math.inf)
    clean_rows = _rows_by_id(db, "clean")

    # Each kill lands at a moment drawn uniformly over a whole run's syncing;
    # a resumed run has less left to do, so some finish first. Those are
    # checked too, and the next attempts start a new collection.
    kills: list[tuple[str, float, int]] = []
    finished: list[str] = []
    episode = 0
    while len(kills) < RANDOM_KILLS:
        collection = f"resumed_{episode}"
        delay = rng.uniform(0.0, sync_seconds)
        landed, writes, _ = _run_until_killed(_command(db, collection, corpus), delay)
        if landed:
            kills.append((collection, round(delay, 2), writes))
        else:
            finished.append(collection)
            episode += 1
    _run(_command(db, f"resumed_{episode}", corpus))

    context = f"seed {seed}, kills (collection, delay s, batches written): {kills}"
    assert any(writes > 0 for _, _, writes in kills), context
    for collection in {*finished, f"resumed_{episode}"}:
        found = _rows_by_id(db, collection)
        _assert_same_rows(found, clean_rows, f"{collection}; {context}")
