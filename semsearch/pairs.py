"""Training pairs for fine-tuning: reading, mining, splitting and batching.

A pair is an anchor (a query-like text), a positive passage that matches it and an
optional negative passage that does not. Pairs come from a JSONL file or are mined
from the chunks of an ingested collection without any labels.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, LoadError

if TYPE_CHECKING:
    from .encoder import Encoder
    from .store import MilvusStore

logger = logging.getLogger(__name__)

# Fields read from a collection to mine pairs.
MINING_FIELDS = ["id", "text", "doc_id", "ordinal", "title", "metadata"]
HEADING_SEPARATOR = " > "
# A sentence anchor needs this many words, and the rest of its chunk this many
# characters, or the pair carries too little to learn from.
MIN_SENTENCE_WORDS = 6
MIN_REST_CHARS = 40
# A sentence ends at ., ! or ? followed by whitespace and an upper-case letter,
# a digit or an opening bracket or quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_HEADING = re.compile(r"\s{0,3}#{1,6}(\s|$)")
# Characters allowed before a document's title at the start of its first chunk.
TITLE_PREFIX_SLACK = 8


@dataclass(frozen=True)
class TrainingPair:
    """An anchor, a passage that matches it and an optional non-matching passage.

    ``group`` names where the pair came from (a document id for mined pairs).
    The batch sampler puts at most one pair of a group into a batch, because two
    passages of one document are poor negatives for each other.
    """

    anchor: str
    positive: str
    negative: str | None = None
    group: str | None = None

    def texts(self) -> set[str]:
        texts = {self.anchor, self.positive}
        if self.negative is not None:
            texts.add(self.negative)
        return texts


def read_pairs(path: str | os.PathLike[str]) -> list[TrainingPair]:
    """Read pairs from JSONL: one object per line with ``anchor`` and ``positive``.

    ``negative`` and ``group`` are optional strings. Blank lines are skipped.
    Raises LoadError naming the file and line of the first invalid record.
    """
    source = str(path)
    if not Path(path).is_file():
        raise ConfigError(
            f"pairs file {source!r} not found; pass a JSONL file with one "
            '{"anchor": ..., "positive": ...} object per line'
        )
    pairs = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                pairs.append(_parse_pair(line, source, number))
    if not pairs:
        raise LoadError(source, "file contains no pairs")
    return pairs


def _parse_pair(line: str, source: str, number: int) -> TrainingPair:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LoadError(source, f"invalid JSON: {exc.msg}", number) from exc
    if not isinstance(record, dict):
        raise LoadError(source, "record is not a JSON object", number)

    values: dict[str, str | None] = {}
    for key in ("anchor", "positive", "negative", "group"):
        value = record.get(key)
        required = key in ("anchor", "positive")
        if value is None and not required:
            values[key] = None
            continue
        if not isinstance(value, str) or not value.strip():
            expected = (
                "a non-empty string" if required else "a non-empty string or null"
            )
            raise LoadError(source, f"field {key!r} must be {expected}", number)
        values[key] = value
    return TrainingPair(
        anchor=str(values["anchor"]),
        positive=str(values["positive"]),
        negative=values["negative"],
        group=values["group"],
    )


def write_pairs(pairs: Iterable[TrainingPair], path: str | os.PathLike[str]) -> int:
    """Write pairs as JSONL in the format ``read_pairs`` reads; return the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for pair in pairs:
            record = {"anchor": pair.anchor, "positive": pair.positive}
            if pair.negative is not None:
                record["negative"] = pair.negative
            if pair.group is not None:
                record["group"] = pair.group
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# -- mining ---------------------------------------------------------------------


def mine_pairs(
    rows: Iterable[Mapping[str, Any]],
    *,
    headings: bool = True,
    titles: bool = True,
    sentences: bool = True,
    seed: int = 0,
) -> list[TrainingPair]:
    """Mine pairs from stored chunk rows, with no labels needed.

    Three kinds, each grouped by document id:

    - heading path (``metadata["headings"]`` joined with " > ") and the first
      chunk under it,
    - document title and the first chunk, with the title cut from its start,
    - one sentence of a chunk, picked at random, and the rest of that chunk.

    Pairs whose anchor equals their positive are dropped, and so are repeats.
    """
    by_document: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_document.setdefault(str(row["doc_id"]), []).append(row)

    rng = random.Random(seed)
    pairs: list[TrainingPair] = []
    for doc_id in sorted(by_document):
        chunks = sorted(by_document[doc_id], key=lambda row: int(row["ordinal"]))
        if headings:
            pairs.extend(_heading_pairs(doc_id, chunks))
        if titles:
            pairs.extend(_title_pairs(doc_id, chunks))
        if sentences:
            pairs.extend(_sentence_pairs(doc_id, chunks, rng))
    return unique_pairs(pairs)


def _heading_pairs(
    doc_id: str, chunks: Sequence[Mapping[str, Any]]
) -> list[TrainingPair]:
    pairs = []
    seen: set[str] = set()
    for row in chunks:
        path = (row.get("metadata") or {}).get("headings") or []
        anchor = HEADING_SEPARATOR.join(str(part) for part in path if str(part).strip())
        if not anchor or anchor in seen:
            continue
        # The heading lines themselves would give the answer away.
        section = _strip_headings(str(row["text"]))
        if section:
            seen.add(anchor)
            pairs.append(TrainingPair(anchor, section, group=doc_id))
    return pairs


def _strip_headings(text: str) -> str:
    lines = [line for line in text.splitlines() if not _HEADING.match(line)]
    return "\n".join(lines).strip()


def _title_pairs(
    doc_id: str, chunks: Sequence[Mapping[str, Any]]
) -> list[TrainingPair]:
    title = str(chunks[0].get("title") or "").strip()
    text = str(chunks[0]["text"]).strip()
    if not title or title == doc_id:
        return []
    # Documents often start with their own title, which would make the pair a
    # string match rather than a lesson in meaning. The slack lets the title
    # follow a Markdown "# " or similar marker.
    position = text.find(title)
    if 0 <= position <= TITLE_PREFIX_SLACK:
        text = text[position + len(title) :]
    text = _strip_headings(text)
    if not text:
        return []
    return [TrainingPair(title, text, group=doc_id)]


def _sentence_pairs(
    doc_id: str, chunks: Sequence[Mapping[str, Any]], rng: random.Random
) -> list[TrainingPair]:
    pairs = []
    for row in chunks:
        sentences = split_sentences(str(row["text"]))
        candidates = [
            i
            for i, sentence in enumerate(sentences)
            if len(sentence.split()) >= MIN_SENTENCE_WORDS
        ]
        if len(sentences) < 2 or not candidates:
            continue
        index = rng.choice(candidates)
        rest = " ".join(sentences[:index] + sentences[index + 1 :])
        if len(rest) >= MIN_REST_CHARS:
            pairs.append(TrainingPair(sentences[index], rest, group=doc_id))
    return pairs


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at paragraph breaks and end punctuation.

    Markdown heading lines are dropped, and whitespace inside a sentence is
    collapsed to single spaces.
    """
    sentences = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        lines = [line for line in paragraph.splitlines() if not _HEADING.match(line)]
        for piece in _SENTENCE_END.split("\n".join(lines)):
            sentence = " ".join(piece.split())
            if sentence:
                sentences.append(sentence)
    return sentences


def unique_pairs(pairs: Iterable[TrainingPair]) -> list[TrainingPair]:
    """Drop pairs whose anchor equals the positive and repeats of (anchor, positive)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for pair in pairs:
        key = (pair.anchor, pair.positive)
        if pair.anchor == pair.positive or key in seen:
            continue
        seen.add(key)
        kept.append(pair)
    return kept


def mine_collection_pairs(store: MilvusStore, *, seed: int = 0) -> list[TrainingPair]:
    """Read every chunk of a collection with the store's paged query and mine pairs."""
    store.require()
    rows = store.query("", MINING_FIELDS)
    logger.info("Mining pairs from %d chunks of %s", len(rows), store.collection)
    return mine_pairs(rows, seed=seed)


def mine_hard_negatives(
    pairs: Sequence[TrainingPair],
    encoder: Encoder,
    store: MilvusStore,
    *,
    depth: int = 10,
    batch_size: int = 64,
) -> list[TrainingPair]:
    """Add a hard negative to each pair by approximate search in the collection.

    The negative is the best-scoring chunk for the anchor that is neither the
    positive nor a chunk of the pair's own document (its ``group``). Pairs with
    no such chunk in the top ``depth`` are dropped, so the result can be shorter.
    """
    store.require()
    mined = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        vectors = encoder.encode_queries([pair.anchor for pair in batch])
        results = store.search(vectors.tolist(), depth)
        for pair, hits in zip(batch, results, strict=True):
            negative = next(
                (
                    hit.text
                    for hit in hits
                    if hit.doc_id != pair.group
                    and hit.text.strip() != pair.positive
                    and hit.text.strip() != pair.anchor
                ),
                None,
            )
            if negative is not None:
                mined.append(replace(pair, negative=negative.strip()))
    logger.info("Mined hard negatives for %d of %d pairs", len(mined), len(pairs))
    return mined


# -- splitting and batching -------------------------------------------------------


def split_held_out(
    pairs: Sequence[TrainingPair], fraction: float, seed: int
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """Split pairs into (train, held out) with a seeded shuffle.

    Held-out pairs share no group with training pairs when groups are set, so a
    document's title and sentence pairs never straddle the split.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"invalid held-out fraction {fraction!r}: use 0 to below 1")
    keys = sorted({_group_key(pair, i) for i, pair in enumerate(pairs)})
    random.Random(seed).shuffle(keys)
    held_keys = set(keys[: round(len(keys) * fraction)])
    train, held_out = [], []
    for i, pair in enumerate(pairs):
        (held_out if _group_key(pair, i) in held_keys else train).append(pair)
    return train, held_out


def _group_key(pair: TrainingPair, index: int) -> str:
    return f"g:{pair.group}" if pair.group is not None else f"i:{index}"


def sample_batches(
    pairs: Sequence[TrainingPair], batch_size: int, seed: int
) -> list[list[int]]:
    """Shuffle pair indices into batches in which no text or group repeats.

    In-batch negatives treat every other pair's passages as wrong matches, so a
    text that appeared twice in a batch would be both right and wrong for some
    anchor. A pair that clashes with its batch is deferred to a later one. Every
    index is used exactly once. Batches can come out smaller than ``batch_size``
    near the end, when the remaining pairs clash with each other.
    """
    if batch_size < 1:
        raise ConfigError(f"invalid batch size {batch_size!r}: use a positive integer")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    pending = deque(order)
    batches = []
    while pending:
        batch: list[int] = []
        texts: set[str] = set()
        groups: set[str] = set()
        deferred = []
        while pending and len(batch) < batch_size:
            index = pending.popleft()
            pair = pairs[index]
            pair_texts = pair.texts()
            if pair_texts & texts or (pair.group is not None and pair.group in groups):
                deferred.append(index)
                continue
            batch.append(index)
            texts |= pair_texts
            if pair.group is not None:
                groups.add(pair.group)
        pending.extendleft(reversed(deferred))
        batches.append(batch)
    return batches


def select_pairs(
    pairs: Sequence[TrainingPair], max_pairs: int | None, seed: int
) -> list[TrainingPair]:
    """Return at most ``max_pairs`` pairs, a seeded random sample in input order."""
    if max_pairs is None or len(pairs) <= max_pairs:
        return list(pairs)
    if max_pairs < 2:
        raise ConfigError(f"invalid max pairs {max_pairs!r}: use 2 or more")
    chosen = sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))
    return [pairs[i] for i in chosen]
