"""Measure the server's HNSW recall@10 against exact search on an ingested collection.

Copies a collection from a Milvus Lite file to a Milvus server started for the run
(no re-embedding), then compares the server's top 10 chunks with a brute-force
search over the same vectors for every query of a BEIR folder.

    python benchmarks/ann_recall_server.py data/scifact \
        --uri /tmp/eval/eval.db --collection eval_scifact
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semsearch import SemanticSearch  # noqa: E402
from semsearch.benchmark import ann_recall_at_k  # noqa: E402
from semsearch.evaluate import load_beir  # noqa: E402
from tests.milvus_server import start_milvus_server  # noqa: E402


def wait_for_index(engine: SemanticSearch, rows: int, timeout: float = 300.0) -> dict:
    """Wait until the server's vector index covers ``rows`` rows."""
    deadline = time.monotonic() + timeout
    while True:
        index = engine.store.index_description()
        if int(index.get("indexed_rows", 0)) >= rows or time.monotonic() > deadline:
            return index
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--uri", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    queries = list(load_beir(args.dataset, split=args.split).queries.values())
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_milvus_server(Path(data_dir))
        try:
            with SemanticSearch(uri=args.uri, collection=args.collection) as source:
                report = source.migrate_to(server.uri, args.collection)
            with SemanticSearch(uri=server.uri, collection=args.collection) as engine:
                engine.store.require()
                index = wait_for_index(engine, report.rows)
                recall = ann_recall_at_k(engine, queries)
        finally:
            server.stop()
    print(json.dumps({"rows": getattr(report, "rows", None), "recall@10": recall, "index": index}, default=str))


if __name__ == "__main__":
    main()
