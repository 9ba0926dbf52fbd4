"""Mine training pairs from a BEIR corpus alone: no queries and no relevance labels.

By default each document gives (title, abstract) and (one sentence, the rest of
the abstract). With ``--context-words N`` each document instead gives one
sentence of at least 6 words and a window of the sentences around it, the
sentence included, grown at random to the left or right while it stays within N
words. With ``--last-sentence`` each abstract of 3 or more sentences gives its
last sentence, where abstracts usually state their finding, and the title with
the sentences before it. The output is JSONL for ``semsearch finetune --pairs``.

    python scripts/mine_beir_pairs.py data/scifact/corpus.jsonl pairs.jsonl
    python scripts/mine_beir_pairs.py data/scifact/corpus.jsonl context.jsonl \
        --context-words 90
    python scripts/mine_beir_pairs.py data/scifact/corpus.jsonl last.jsonl \
        --last-sentence
"""

from __future__ import annotations

import argparse
import json
import random

from semsearch.pairs import (
    MIN_SENTENCE_WORDS,
    TrainingPair,
    mine_pairs,
    split_sentences,
    write_pairs,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="BEIR corpus.jsonl with _id, title and text")
    parser.add_argument("output", help="pairs JSONL to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--context-words",
        type=int,
        metavar="N",
        help="Pair one sentence per document with its surrounding sentences, "
        "up to N words in all, instead of the default kinds",
    )
    parser.add_argument(
        "--last-sentence",
        action="store_true",
        help="Pair each abstract's last sentence with the title and the sentences "
        "before it, instead of the default kinds",
    )
    args = parser.parse_args()
    if args.context_words and args.last_sentence:
        parser.error("pass --context-words or --last-sentence, not both")

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
    if args.context_words:
        rng = random.Random(args.seed)
        pairs = [
            pair
            for row in rows
            if (pair := context_pair(row, args.context_words, rng)) is not None
        ]
    elif args.last_sentence:
        pairs = [pair for row in rows if (pair := last_sentence_pair(row)) is not None]
    else:
        pairs = mine_pairs(rows, headings=False, seed=args.seed)
    count = write_pairs(pairs, args.output)
    print(f"{count} pairs from {len(rows)} documents written to {args.output}")


def last_sentence_pair(row: dict) -> TrainingPair | None:
    """Return (last sentence, title and the sentences before it), or None."""
    sentences = split_sentences(row["text"])
    if len(sentences) < 3 or len(sentences[-1].split()) < MIN_SENTENCE_WORDS:
        return None
    rest = f"{row['title']}. " + " ".join(sentences[:-1])
    return TrainingPair(sentences[-1], rest, group=row["doc_id"])


def context_pair(row: dict, max_words: int, rng: random.Random) -> TrainingPair | None:
    """Return (sentence, window of sentences containing it), or None if too short."""
    sentences = split_sentences(row["text"])
    candidates = [
        i for i, text in enumerate(sentences) if len(text.split()) >= MIN_SENTENCE_WORDS
    ]
    if len(sentences) < 2 or not candidates:
        return None
    chosen = rng.choice(candidates)
    first = last = chosen
    words = len(sentences[chosen].split())
    while True:
        sides = []
        if first > 0 and words + len(sentences[first - 1].split()) <= max_words:
            sides.append("left")
        if (
            last < len(sentences) - 1
            and words + len(sentences[last + 1].split()) <= max_words
        ):
            sides.append("right")
        if not sides:
            break
        if rng.choice(sides) == "left":
            first -= 1
            words += len(sentences[first].split())
        else:
            last += 1
            words += len(sentences[last].split())
    if first == last:
        return None
    window = " ".join(sentences[first : last + 1])
    return TrainingPair(sentences[chosen], window, group=row["doc_id"])


if __name__ == "__main__":
    main()
