"""Choose hybrid fusion settings on a training split, never on the test split.

Runs the dense and BM25 searches once per query, then fuses the two candidate
lists offline for every setting in a grid and scores each with nDCG@10.

    python benchmarks/tune_hybrid.py data/scifact --split train \
        --uri /tmp/eval/eval.db --collection eval_scifact
"""

from __future__ import annotations

import argparse
import itertools
import json

from semsearch import SemanticSearch
from semsearch.evaluate import evaluate_run, load_beir
from semsearch.fusion import group_by_document
from semsearch.search import Searcher, SearchOptions

CANDIDATES = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--uri", required=True)
    parser.add_argument("--collection", required=True)
    args = parser.parse_args()

    dataset = load_beir(args.dataset, split=args.split)
    query_ids = list(dataset.queries)
    texts = [dataset.queries[q] for q in query_ids]
    with SemanticSearch(uri=args.uri, collection=args.collection) as engine:
        engine.store.require()
        vectors = engine.encoder.encode_queries(texts)
        dense = engine.store.search(vectors.tolist(), CANDIDATES)
        lexical = engine.store.search_lexical(texts, CANDIDATES)
        searcher = Searcher(engine.encoder, engine.store)

        def score(options: SearchOptions) -> float:
            run = {}
            for index, query_id in enumerate(query_ids):
                fused = searcher._combine(dense[index], lexical[index], options)
                hits = group_by_document(fused)[:100]
                run[query_id] = {hit.doc_id: hit.score for hit in hits}
            return evaluate_run(dataset.qrels, run)["ndcg@10"]

        results = {
            "dense": score(SearchOptions(mode="dense")),
            "bm25": score(SearchOptions(mode="bm25")),
        }
        for weight, scale in itertools.product(
            (0.3, 0.4, 0.5, 0.6, 0.7), (2.0, 5.0, 10.0, 20.0, 40.0)
        ):
            options = SearchOptions(
                mode="hybrid", hybrid_weights=(weight, 1 - weight), bm25_scale=scale
            )
            results[f"normalized w={weight} c={scale}"] = score(options)
        for weight in (0.3, 0.5, 0.7):
            options = SearchOptions(
                mode="hybrid", fusion="rrf", hybrid_weights=(weight, 1 - weight)
            )
            results[f"rrf w={weight}"] = score(options)
    for name, value in sorted(results.items(), key=lambda item: -item[1]):
        print(f"{value:.4f}  {name}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
