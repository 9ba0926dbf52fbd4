"""Compare vector index types on Milvus Lite: build, reopen, search time and recall.

Vectors are synthetic: unit-length 384-dim points drawn around 200 random centres,
which is the shape of sentence embeddings of a mixed corpus. Recall@10 is measured
against exact (numpy) cosine search. Times are reported as ratios to FLAT, measured
in the same run, so results from different machines compare.

    .venv/bin/python scripts/bench_lite_index.py --rows 30000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384
INDEXES = {
    "FLAT": {},
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
}
SEARCH_PARAMS = {"FLAT": {}, "HNSW": {"ef": 64}, "IVF_FLAT": {"nprobe": 16}}


def make_vectors(rows: int, queries: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    labels = rng.integers(0, len(centres), size=rows + queries)
    points = centres[labels] + 0.6 * rng.normal(size=(rows + queries, DIM)).astype(
        np.float32
    )
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points[:rows], points[rows:]


def run_one(
    index_type: str, folder: Path, data: np.ndarray, queries: np.ndarray, truth: np.ndarray
) -> dict[str, float]:
    from pymilvus import DataType, MilvusClient

    uri = str(folder / f"{index_type.lower()}.db")
    client = MilvusClient(uri=uri)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    params = client.prepare_index_params()
    # Milvus Lite 3.2 reads build parameters only from a nested "params" pair.
    build = {"params": INDEXES[index_type]} if INDEXES[index_type] else {}
    params.add_index("vector", index_type=index_type, metric_type="COSINE", params=build)
    client.create_collection("bench", schema=schema, index_params=params)
    for start in range(0, len(data), 2000):
        block = data[start : start + 2000]
        client.insert(
            "bench",
            [{"id": start + i, "vector": row.tolist()} for i, row in enumerate(block)],
        )
    # Milvus Lite 3.2 builds an index only for rows flushed to a segment file,
    # and semsearch flushes at the end of every ingest, so the script does too.
    client.flush("bench")
    began = time.perf_counter()
    client.close()
    client = MilvusClient(uri=uri)
    client.load_collection("bench")
    client.search("bench", data=queries[:1].tolist(), limit=10)
    reopen_s = time.perf_counter() - began

    began = time.perf_counter()
    found = []
    for start in range(0, len(queries), 50):
        result = client.search(
            "bench",
            data=queries[start : start + 50].tolist(),
            limit=10,
            search_params={"metric_type": "COSINE", "params": SEARCH_PARAMS[index_type]},
        )
        found.extend([hit["id"] for hit in hits] for hits in result)
    search_s = time.perf_counter() - began
    client.close()

    recall = np.mean(
        [len(set(ids) & set(expected)) / 10 for ids, expected in zip(found, truth)]
    )
    return {"reopen_s": reopen_s, "search_s": search_s, "recall_at_10": float(recall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    data, queries = make_vectors(args.rows, args.queries)
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for index_type in INDEXES:
            results[index_type] = run_one(index_type, Path(folder), data, queries, truth)
    anchor = results["FLAT"]
    for index_type, result in results.items():
        result["reopen_vs_flat"] = result["reopen_s"] / anchor["reopen_s"]
        result["search_vs_flat"] = result["search_s"] / anchor["search_s"]
    print(json.dumps({"rows": args.rows, "queries": args.queries, **results}, indent=1))


if __name__ == "__main__":
    main()
