"""Mine training pairs from a BEIR corpus alone: no queries and no relevance labels.

Each document gives (title, abstract) and (one sentence, the rest of the abstract).
The output is JSONL for ``semsearch finetune --pairs``.

    python scripts/mine_beir_pairs.py data/scifact/corpus.jsonl pairs.jsonl
"""

from __future__ import annotations

import argparse
import json

from semsearch.pairs import mine_pairs, write_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="BEIR corpus.jsonl with _id, title and text")
    parser.add_argument("output", help="pairs JSONL to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    with open(args.corpus, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            rows.append(
                {
                    "doc_id": str(record["_id"]),
                    "ordinal": 0,
                    "title": str(record.get("title") or ""),
                    "text": str(record.get("text") or ""),
                    "metadata": {},
                }
            )
    pairs = mine_pairs(rows, headings=False, seed=args.seed)
    count = write_pairs(pairs, args.output)
    print(f"{count} pairs from {len(rows)} documents written to {args.output}")


if __name__ == "__main__":
    main()
