"""Warm search latency on Milvus Lite or a server, and the overhead of SemanticSearch.

It inserts --rows chunks with random unit vectors straight through the store (no
embedding), then times three calls per query, interleaved: the raw
MilvusClient.search with a precomputed vector and the same search parameters
(the anchor), the query embedding alone, and SemanticSearch.search end to end.
The overhead is the end-to-end time minus the other two.

    python benchmarks/search_latency.py --rows 100000
    python benchmarks/search_latency.py --rows 100000 --uri http://127.0.0.1:19530
    python benchmarks/search_latency.py --rows 100000 --start-server

With --uri, the collection (--collection, default latency_bench) is dropped
before and after the run, so point it at a server with no other collection of
that name. --start-server starts the test suite's Milvus 2.3.5 server
(installed by scripts/install-milvus-server.sh) in a temporary folder and stops
it at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    machine,
    median,
    parser,
    percentile,
    print_table,
    read_passages,
    write_json,
)

INSERT_BATCH = 2000


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--rows", type=int, default=100_000)
    arguments.add_argument("--queries", type=int, default=100)
    arguments.add_argument("--uri", help="Milvus server URI (default: a Lite file)")
    arguments.add_argument("--collection", default="latency_bench")
    arguments.add_argument(
        "--start-server", action="store_true", help="Run on a Milvus 2.3.5 server"
    )
    options = arguments.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not options.start_server:
        run(options)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.milvus_server import start_milvus_server

    with tempfile.TemporaryDirectory(prefix="semsearch-latency-server-") as folder:
        server = start_milvus_server(Path(folder))
        try:
            options.uri = server.uri
            run(options)
        finally:
            server.stop()


def run(options: argparse.Namespace) -> None:
    """Insert the rows, time the three calls per query and write the results."""
    from semsearch import SemanticSearch
    from semsearch.store import CHUNK_HASH_FIELD, OUTPUT_FIELDS, chunk_id

    uri = options.uri or str(
        Path(tempfile.mkdtemp(prefix="semsearch-latency-")) / "latency.db"
    )
    engine = SemanticSearch(uri=uri, collection=options.collection, device="cpu")
    encoder = engine.encoder
    store = engine.store
    if store.exists():
        store.drop()
    store.ensure_collection(encoder.fingerprint)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for offset in range(0, options.rows, INSERT_BATCH):
        count = min(INSERT_BATCH, options.rows - offset)
        vectors = rng.standard_normal((count, encoder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [
            {
                "id": chunk_id(f"doc{offset + i}", 0),
                "vector": vector.tolist(),
                "text": f"synthetic chunk {offset + i}",
                "doc_id": f"doc{offset + i}",
                "ordinal": 0,
                "chunk_count": 1,
                "char_start": 0,
                "char_end": 20,
                "source": f"synthetic/{offset + i}",
                "title": "",
                "doc_hash": "0" * 64,
                CHUNK_HASH_FIELD: "0" * 64,
                "metadata": {},
            }
            for i, vector in enumerate(vectors)
        ]
        store.upsert(rows)
    store.flush()
    insert_seconds = time.perf_counter() - start

    queries = [
        text.split(". ")[0] for text in read_passages(options.scifact, options.queries)
    ]
    query_vectors = encoder.encode_queries(queries)
    client = store.client
    engine.search(queries[0], k=10)  # loads the collection and warms the caches
    raw, embed, full = [], [], []
    for _ in range(options.repeats):
        for query, vector in zip(queries, query_vectors):
            start = time.perf_counter()
            client.search(
                store.collection,
                data=[vector.tolist()],
                limit=10,
                output_fields=OUTPUT_FIELDS,
                search_params={"metric_type": "COSINE", "params": {"ef": 64}},
            )
            raw.append(time.perf_counter() - start)
            start = time.perf_counter()
            encoder.encode_queries([query])
            embed.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.search(query, k=10)
            full.append(time.perf_counter() - start)
    if options.uri:
        store.drop()
    engine.close()

    def summary(values: list[float]) -> list[str]:
        return [
            f"{1e3 * percentile(values, 0.5):.2f}",
            f"{1e3 * percentile(values, 0.99):.2f}",
            f"{percentile(values, 0.5) / percentile(raw, 0.5):.2f}",
        ]

    overhead = median(full) - median(raw) - median(embed)
    print(
        f"{options.rows} rows inserted in {insert_seconds:.1f} s "
        f"({options.rows / insert_seconds:.0f} rows/s); encoder {encoder.backend}"
    )
    print_table(
        ["call", "p50 ms", "p99 ms", "p50 x raw search"],
        [
            ["MilvusClient.search (anchor)", *summary(raw)],
            ["query embedding", *summary(embed)],
            ["SemanticSearch.search", *summary(full)],
        ],
    )
    print(f"overhead beyond raw search + embedding, median: {1e3 * overhead:.2f} ms")
    write_json(
        options.json,
        "search_latency_server.json" if options.uri else "search_latency.json",
        {
            "machine": machine(),
            "backend_uri": "server" if options.uri else "lite",
            "index": store.vector_index()[0],
            "rows": options.rows,
            "insert_rows_per_s": options.rows / insert_seconds,
            "backend": encoder.backend,
            "raw_ms": [1e3 * percentile(raw, 0.5), 1e3 * percentile(raw, 0.99)],
            "embed_ms": [1e3 * percentile(embed, 0.5), 1e3 * percentile(embed, 0.99)],
            "search_ms": [1e3 * percentile(full, 0.5), 1e3 * percentile(full, 0.99)],
            "overhead_ms": 1e3 * overhead,
        },
    )


if __name__ == "__main__":
    main()
