"""Milvus Lite lookups and searches before and after a flush, at one collection size.

Milvus Lite 3.2 keeps written rows in an in-memory table until a flush moves them
to a segment file, and each query or search converts that whole table row by row.
This script upserts --rows synthetic chunks through the store (no embedding), then
times the two reads an ingest and a search make, first with every row unflushed
(the anchor), then after one flush:

- the stored-document lookup an ingest makes per batch (130 document ids);
- a top-10 vector search with the default Lite index (FLAT).

    python benchmarks/lite_flush.py --rows 30000
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, median, parser, print_table, write_json

LOOKUP_IDS = 130
INSERT_BATCH = 2000


def _rows(start: int, count: int, rng: np.random.Generator) -> list[dict]:
    from semsearch.store import CHUNK_HASH_FIELD, chunk_id

    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        {
            "id": chunk_id(f"doc{start + i}", 0),
            "vector": vector.tolist(),
            "text": f"synthetic chunk {start + i} " + "word " * 150,
            "doc_id": f"doc{start + i}",
            "ordinal": 0,
            "chunk_count": 1,
            "char_start": 0,
            "char_end": 800,
            "source": f"synthetic/{start + i}",
            "title": "",
            "doc_hash": "0" * 64,
            CHUNK_HASH_FIELD: "0" * 64,
            "metadata": {},
        }
        for i, vector in enumerate(vectors)
    ]


def _time_reads(store, rng: np.random.Generator, repeats: int) -> dict[str, float]:
    lookups, searches = [], []
    for round_ in range(repeats):
        ids = [f"missing{round_}_{i}" for i in range(LOOKUP_IDS)]
        started = time.perf_counter()
        store.stored_documents(ids)
        lookups.append(time.perf_counter() - started)
        query = rng.standard_normal((1, 384)).astype(np.float32)
        started = time.perf_counter()
        store.search(query.tolist(), 10)
        searches.append(time.perf_counter() - started)
    return {"lookup_s": median(lookups), "search_s": median(searches)}


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--rows", type=int, default=30_000)
    options = arguments.parse_args()

    from semsearch import SemanticSearch

    rng = np.random.default_rng(0)
    repeats = max(options.repeats, 5)
    with tempfile.TemporaryDirectory() as folder:
        uri = str(Path(folder) / "flush.db")
        with SemanticSearch(uri=uri, collection="flush_bench") as engine:
            store = engine.store
            store.ensure_collection(engine.encoder.fingerprint)
            for start in range(0, options.rows, INSERT_BATCH):
                count = min(INSERT_BATCH, options.rows - start)
                store.upsert(_rows(start, count, rng))
            before = _time_reads(store, rng, repeats)
            started = time.perf_counter()
            store.flush()
            flush_s = time.perf_counter() - started
            after = _time_reads(store, rng, repeats)

    print_table(
        ["read", "unflushed ms", "flushed ms", "x unflushed"],
        [
            [name, f"{1e3 * before[key]:.1f}", f"{1e3 * after[key]:.1f}",
             f"{after[key] / before[key]:.3f}"]
            for name, key in (("lookup of 130 ids", "lookup_s"), ("search", "search_s"))
        ],
    )  # fmt: skip
    print(f"flush of {options.rows} rows: {flush_s:.2f} s")
    write_json(
        options.json,
        "lite_flush.json",
        {"machine": machine(), "rows": options.rows, "repeats": repeats,
         "unflushed": before, "flushed": after, "flush_s": flush_s},
    )  # fmt: skip


if __name__ == "__main__":
    main()
