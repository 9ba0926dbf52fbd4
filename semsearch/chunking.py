"""Token-aware splitting of document text into chunks that fit the model's input.

A chunk is cut at the latest boundary that keeps it within ``max_tokens`` content
tokens. Boundaries are ranked: paragraph breaks and Markdown headings first, then
line breaks, sentence ends and word breaks, and finally any token boundary. A coarser
boundary is taken only when it leaves the chunk at least half full. Otherwise the
next finer class is tried, so chunks stay close to the token budget.
"""

from __future__ import annotations

import bisect
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from semsearch.errors import ConfigError
from semsearch.types import Chunk, Document

logger = logging.getLogger(__name__)

# Each pattern matches a break and the whitespace after it, so the match end is the
# first character of the next paragraph, line, sentence or word.
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_LINE_BREAK = re.compile(r"\n\s*")
# A sentence ends at ".", "!" or "?" before whitespace, or at a CJK full stop,
# exclamation or question mark (U+3002, U+FF01, U+FF1F), which need no space after.
# Closing quotes and brackets after the mark stay with the sentence.
_SENTENCE_END = re.compile(
    "[.!?][\"'\u201d\u2019)\\]]*\\s+"
    "|[\u3002\uff01\uff1f][\u300d\u300f\u201d\u2019\uff09]*\\s*"
)
_WORD_BREAK = re.compile(r"\s+")

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
# A Markdown line that starts one of these blocks begins a new line when rendered.
# Other line breaks inside a paragraph are soft wraps that render as spaces.
_BLOCK_START = re.compile(r"[-*+>|<#]|\d{1,9}[.)]|`{3}|~{3}")

# WordPiece maps a word longer than this many characters to a single [UNK] token.
_DEFAULT_MAX_WORD_CHARS = 100


@dataclass(frozen=True)
class _Heading:
    position: int
    path: tuple[str, ...]
    content_start: int


@dataclass(frozen=True)
class _MarkdownOutline:
    """The ATX headings and fenced code blocks of a Markdown text, in order.

    ``code_blocks`` contains the ``(start, end)`` character span of each fenced block,
    fence lines included.
    """

    headings: list[_Heading]
    code_blocks: list[tuple[int, int]]


@dataclass(frozen=True)
class _Layout:
    """The token units and ranked cut positions of one text.

    A unit is a token, or a group of tokens that share characters (one Hangul
    syllable can become three tokens). ``cumulative[i]`` is the number of tokens
    before unit ``i``. ``boundaries`` lists the sorted cut positions of each class,
    best class first.
    """

    text: str
    unit_starts: list[int]
    cumulative: list[int]
    boundaries: tuple[list[int], ...]
    overlap_starts: list[int]


class Chunker:
    """Splits text into chunks of at most ``max_tokens`` content tokens."""

    def __init__(self, tokenizer: Any, max_tokens: int, overlap: int = 0) -> None:
        _validate_settings(max_tokens, overlap)
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"Chunker needs a fast tokenizer for offset mapping, got "
                f"{type(tokenizer).__name__!r}. Load one with "
                "AutoTokenizer.from_pretrained(path, use_fast=True)."
            )
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap

    def count_tokens(self, text: str) -> int:
        """Count the content tokens of ``text``, without special tokens."""
        encoding = self.tokenizer(
            text, add_special_tokens=False, truncation=False, verbose=False
        )
        return len(encoding["input_ids"])

    def chunk_document(self, document: Document) -> list[Chunk]:
        """Split a document, as Markdown when its ``format`` metadata is markdown."""
        markdown = document.metadata.get("format") == "markdown"
        return self.split(document.text, document.id, markdown=markdown)

    def split(
        self, text: str, doc_id: str = "", *, markdown: bool = False
    ) -> list[Chunk]:
        """Split ``text`` into chunks that cover it and overlap by about ``overlap``.

        Returns no chunks for text that is empty or contains only whitespace and
        invisible format characters. With ``markdown=True``, each chunk's
        ``headings`` is the ATX heading path at its start, and heading lines are
        preferred chunk starts.
        """
        if _is_blank(text):
            return []

        outline = _parse_markdown(text) if markdown else None
        layout = _build_layout(text, self._token_offsets(text), outline)
        spans = self._merge_blank_spans(text, self._spans(layout))

        headings = outline.headings if outline is not None else []

        heading_positions = [heading.position for heading in headings]
        chunks = []
        for ordinal, (start, end) in enumerate(spans):
            path = _heading_path_at(headings, heading_positions, start)
            chunks.append(Chunk(doc_id, ordinal, text[start:end], start, end, path))
        logger.debug(
            "Split %s (%d chars) into %d chunks", doc_id, len(text), len(chunks)
        )
        return chunks

    def _spans(self, layout: _Layout) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        start, previous_end = 0, 0
        while True:
            end = self._cut(layout, start, previous_end)
            spans.append((start, end))
            if end >= len(layout.text) or not _has_units_after(layout, end):
                break
            start, previous_end = _next_start(layout, start, end, self.overlap), end
        last_start, _ = spans[-1]
        spans[-1] = (last_start, len(layout.text))
        return spans

    def _merge_blank_spans(
        self, text: str, spans: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Join each span of blank characters to the span before it.

        A blank first span joins the second. A join that would exceed
        ``max_tokens`` is skipped, which can happen only when the tokenizer turns a
        character counted as blank, such as a format character newer than its
        Unicode tables, into a token.
        """
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged:
                previous_start, previous_end = merged[-1]
                joined_end = max(previous_end, end)
                blank = _is_blank(text[start:end]) or (
                    len(merged) == 1 and _is_blank(text[previous_start:previous_end])
                )
                joined_text = text[previous_start:joined_end]
                if blank and self.count_tokens(joined_text) <= self.max_tokens:
                    merged[-1] = (previous_start, joined_end)
                    continue
            merged.append((start, end))
        return merged

    def _cut(self, layout: _Layout, start: int, previous_end: int) -> int:
        """Pick the end of the chunk at ``start``, checked by tokenising the chunk.

        WordPiece can tokenise a piece cut from the middle of a word differently
        from the same span in context, so the budget shrinks by the excess until
        the chunk's own tokenisation fits.
        """
        budget = self.max_tokens
        while budget >= 1:
            end = _best_cut(layout, start, previous_end, budget)
            if end is None:
                break
            excess = self.count_tokens(layout.text[start:end]) - self.max_tokens
            if excess <= 0:
                return end
            budget -= excess
        return self._character_cut(layout, start)

    def _character_cut(self, layout: _Layout, start: int) -> int:
        """Return the longest prefix end that fits, searched character by character.

        This is the last resort for a unit that does not fit alone, such as a
        word piece that tokenises longer when cut out of its word.
        """
        first = bisect.bisect_left(layout.unit_starts, start)
        stop = len(layout.text)
        if first + 1 < len(layout.unit_starts):
            stop = layout.unit_starts[first + 1]
        low, high = start + 1, stop
        while low < high:
            middle = (low + high + 1) // 2
            if self.count_tokens(layout.text[start:middle]) <= self.max_tokens:
                low = middle
            else:
                high = middle - 1
        if self.count_tokens(layout.text[start:low]) > self.max_tokens:
            # NOTE: one character can tokenise to several tokens. A chunk cannot
            # shrink below one character, so this one is emitted over the budget.
            logger.warning(
                "Character %r at %d tokenises to more than max_tokens=%d",
                layout.text[start],
                start,
                self.max_tokens,
            )
        return low

    def _token_offsets(self, text: str) -> list[tuple[int, int]]:
        encoding = self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            truncation=False,
            verbose=False,
        )
        offsets = [(int(start), int(end)) for start, end in encoding["offset_mapping"]]
        return self._split_long_words(text, offsets)

    def _split_long_words(
        self, text: str, offsets: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Replace each [UNK] token of an over-long word by the tokens of its pieces.

        WordPiece turns a word of more than ``max_input_chars_per_word`` characters
        into one [UNK] token. Tokenising the word in pieces of that size gives the
        chunker token boundaries inside it, so a long run without breaks is still
        split near the budget.
        """
        model = getattr(
            getattr(self.tokenizer, "backend_tokenizer", None), "model", None
        )
        max_chars = getattr(model, "max_input_chars_per_word", _DEFAULT_MAX_WORD_CHARS)
        if not any(end - start > max_chars for start, end in offsets):
            return offsets

        result: list[tuple[int, int]] = []
        for start, end in offsets:
            if end - start <= max_chars:
                result.append((start, end))
                continue
            for piece_start in range(start, end, max_chars):
                piece_end = min(piece_start + max_chars, end)
                encoding = self.tokenizer(
                    text[piece_start:piece_end],
                    add_special_tokens=False,
                    return_offsets_mapping=True,
                    truncation=False,
                    verbose=False,
                )
                for token_start, token_end in encoding["offset_mapping"]:
                    result.append((piece_start + token_start, piece_start + token_end))
        return result


def content_token_budget(tokenizer: Any, max_seq_length: int, prefix: str = "") -> int:
    """Compute how many content tokens fit in one model input.

    That is ``max_seq_length`` minus the special tokens the tokenizer adds to one
    sequence and minus the tokens of ``prefix`` (a passage prefix such as
    ``"passage: "``). Raises ConfigError when nothing is left for content.
    """
    special = tokenizer.num_special_tokens_to_add(pair=False)
    prefix_tokens = 0
    if prefix:
        # NOTE: this counts the prefix alone. It matches the prefix's tokens in
        # "prefix + text" when the prefix ends at a word break, as usual prefixes do.
        encoding = tokenizer(prefix, add_special_tokens=False, verbose=False)
        prefix_tokens = len(encoding["input_ids"])

    budget = max_seq_length - special - prefix_tokens
    if budget < 1:
        raise ConfigError(
            f"max_seq_length={max_seq_length!r} leaves no room for content after "
            f"{special} special tokens and {prefix_tokens} tokens of prefix "
            f"{prefix!r}. Raise max_seq_length above {special + prefix_tokens} or "
            "shorten the prefix."
        )
    return budget


def _validate_settings(max_tokens: int, overlap: int) -> None:
    if max_tokens < 1:
        raise ConfigError(
            f"Invalid max_tokens={max_tokens!r}: it must be at least 1. Pass the "
            "model's max sequence length minus its special and prefix tokens, as "
            "content_token_budget() computes it."
        )
    if overlap < 0:
        raise ConfigError(
            f"Invalid overlap={overlap!r}: it must be 0 or more. Pass 0 for chunks "
            "that do not overlap."
        )
    if overlap >= max_tokens:
        raise ConfigError(
            f"Invalid overlap={overlap!r} for max_tokens={max_tokens!r}: the overlap "
            "must be smaller than max_tokens so that each chunk adds new text. Set "
            f"overlap to at most {max_tokens - 1}."
        )


def _is_blank(text: str) -> bool:
    """Return whether ``text`` contains only whitespace and invisible characters.

    Invisible characters are the control and format characters (Unicode categories
    Cc and Cf), such as zero-width spaces (U+200B) and byte order marks (U+FEFF).
    """
    return all(
        char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in text
    )


def _build_layout(
    text: str, offsets: list[tuple[int, int]], outline: _MarkdownOutline | None
) -> _Layout:
    unit_starts, cumulative = _group_units(text, offsets)
    paragraph, line, sentence, word = (
        _match_ends(pattern, text)
        for pattern in (_PARAGRAPH_BREAK, _LINE_BREAK, _SENTENCE_END, _WORD_BREAK)
    )
    if outline is not None:
        line = {p for p in line if _is_hard_line_break(text, p, outline.code_blocks)}
        # A heading line is a boundary like a paragraph break. The text right after
        # it is not, so a heading is not left at the end of the chunk before its
        # section.
        after_heading = {heading.content_start for heading in outline.headings}
        at_heading = {heading.position for heading in outline.headings}
        paragraph = (paragraph - after_heading) | at_heading
        line, sentence, word = (
            positions - after_heading for positions in (line, sentence, word)
        )

    boundaries = tuple(
        sorted(positions) for positions in (paragraph, line, sentence, word)
    )
    overlap_starts = sorted(paragraph | line | sentence | word)
    return _Layout(text, unit_starts, cumulative, boundaries, overlap_starts)


def _is_hard_line_break(
    text: str, position: int, code_blocks: list[tuple[int, int]]
) -> bool:
    """Return whether the Markdown line at ``position`` renders on a new line."""
    if _BLOCK_START.match(text, position):
        return True
    index = bisect.bisect_right(code_blocks, (position, len(text))) - 1
    return index >= 0 and position < code_blocks[index][1]


def _match_ends(pattern: re.Pattern[str], text: str) -> set[int]:
    ends = {match.end() for match in pattern.finditer(text)}
    ends.discard(len(text))
    return ends


def _group_units(
    text: str, offsets: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Group tokens into the units that a chunk boundary may not split.

    Tokens that share a character form one unit. A token of blank characters
    joins the unit before it, or the unit after it at the start of the text, so no
    chunk consists of blank tokens alone.
    """
    unit_starts: list[int] = []
    cumulative = [0]
    unit_end = -1
    unit_blank = False
    for start, end in offsets:
        token_blank = _is_blank(text[start:end])
        if unit_starts and (
            start < unit_end or start <= unit_starts[-1] or token_blank or unit_blank
        ):
            cumulative[-1] += 1
            unit_end = max(unit_end, end)
            unit_blank = unit_blank and token_blank
            continue
        unit_starts.append(start)
        cumulative.append(cumulative[-1] + 1)
        unit_end = end
        unit_blank = token_blank
    return unit_starts, cumulative


def _has_units_after(layout: _Layout, position: int) -> bool:
    return bisect.bisect_left(layout.unit_starts, position) < len(layout.unit_starts)


def _best_cut(
    layout: _Layout, start: int, previous_end: int, budget: int
) -> int | None:
    """Return the best chunk end for a chunk at ``start`` within ``budget`` tokens.

    Returns the text length when the rest fits, and None when not even the first
    token unit fits. A boundary class is used only when its latest boundary leaves
    the chunk at least half full and past ``previous_end``.
    """
    starts, cumulative = layout.unit_starts, layout.cumulative
    first = bisect.bisect_left(starts, start)
    if cumulative[-1] - cumulative[first] <= budget:
        return len(layout.text)

    # The units first .. limit_unit - 1 fit in the budget.
    limit_unit = bisect.bisect_right(cumulative, cumulative[first] + budget) - 1
    if limit_unit <= first:
        return None
    limit = starts[limit_unit]

    half = max(1, (budget + 1) // 2)
    fill_unit = min(
        bisect.bisect_left(cumulative, cumulative[first] + half), limit_unit
    )
    lowest = max(starts[fill_unit], previous_end + 1, start + 1)
    for positions in layout.boundaries:
        index = bisect.bisect_right(positions, limit) - 1
        if index >= 0 and positions[index] >= lowest:
            return positions[index]
    return limit


def _next_start(layout: _Layout, start: int, end: int, overlap: int) -> int:
    """Return the start of the chunk after ``[start, end)``.

    The chunk starts about ``overlap`` tokens before ``end``, moved back to a word
    break when one lies within another ``overlap`` tokens. It always starts after
    the first token of the previous chunk, so starts strictly increase.
    """
    if overlap == 0:
        return end

    starts, cumulative = layout.unit_starts, layout.cumulative
    first_unit = bisect.bisect_left(starts, start)
    end_unit = bisect.bisect_left(starts, end)
    target_unit = bisect.bisect_right(cumulative, cumulative[end_unit] - overlap) - 1
    target_unit = max(target_unit, first_unit + 1)
    if target_unit >= end_unit:
        return end

    target = starts[target_unit]
    far_unit = bisect.bisect_left(cumulative, cumulative[end_unit] - 2 * overlap)
    lowest = max(starts[min(far_unit, target_unit)], starts[first_unit] + 1)
    index = bisect.bisect_right(layout.overlap_starts, target) - 1
    if index >= 0 and layout.overlap_starts[index] >= lowest:
        return layout.overlap_starts[index]
    return target


def _parse_markdown(text: str) -> _MarkdownOutline:
    """Find the ATX headings and fenced code blocks of Markdown ``text``.

    Lines inside fenced code blocks are never headings.
    """
    headings: list[_Heading] = []
    code_blocks: list[tuple[int, int]] = []
    stack: list[tuple[int, str]] = []
    fence: str | None = None
    block_start = 0
    position = 0
    for line in text.split("\n"):
        line_start, position = position, position + len(line) + 1
        content = line.rstrip("\r")
        opened = fence is None
        fence, in_code = _update_fence(fence, content)
        if in_code and opened:
            block_start = line_start
        if in_code and fence is None:
            code_blocks.append((block_start, min(position, len(text))))
        if in_code:
            continue
        heading = _parse_heading_line(content, line_start, stack)
        if heading is not None:
            content_start = _skip_whitespace(text, min(position, len(text)))
            headings.append(_Heading(heading[0], heading[1], content_start))
    if fence is not None:
        code_blocks.append((block_start, len(text)))
    return _MarkdownOutline(headings, code_blocks)


def _parse_heading_line(
    line: str, line_start: int, stack: list[tuple[int, str]]
) -> tuple[int, tuple[str, ...]] | None:
    """Parse an ATX heading line and update the open heading ``stack`` in place.

    Returns the position of the heading's first ``#`` and the heading path after
    it, or None when the line is not a heading.
    """
    match = _ATX_HEADING.fullmatch(line)
    if match is None:
        return None

    level = len(match.group(1))
    title = _CLOSING_HASHES.sub("", match.group(2) or "").strip()
    while stack and stack[-1][0] >= level:
        stack.pop()
    if title:
        stack.append((level, title))
    path = tuple(name for _, name in stack)
    return line_start + match.start(1), path


def _update_fence(fence: str | None, line: str) -> tuple[str | None, bool]:
    """Return the fence still open after ``line`` and whether ``line`` is code."""
    match = _FENCE.match(line)
    if fence is None:
        if match is None:
            return None, False
        if match.group(1)[0] == "`" and "`" in line[match.end() :]:
            return None, False
        return match.group(1), True
    closes = (
        match is not None
        and match.group(1)[0] == fence[0]
        and len(match.group(1)) >= len(fence)
        and not line[match.end() :].strip()
    )
    return (None if closes else fence), True


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _heading_path_at(
    headings: list[_Heading], positions: list[int], start: int
) -> tuple[str, ...]:
    index = bisect.bisect_right(positions, start) - 1
    if index < 0:
        return ()
    return headings[index].path
