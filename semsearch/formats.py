"""Readers that turn the bytes of one file into text or records.

Every reader takes the file path and its ``source`` name (used in messages) and
raises :class:`~semsearch.errors.LoadError` when the whole file is unusable.
Record readers yield a :class:`Record` per row, or a ``LoadError`` value with the
line number for a row that cannot be read, so one bad row never stops the rest.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import logging
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from semsearch.errors import LoadError

logger = logging.getLogger(__name__)

# Longest BOMs first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE
)
# Languages that charset-normalizer names and that cp1252 covers. "Unknown"
# (too little text to tell) is included because cp1252 is the most common
# legacy encoding.
_CP1252_LANGUAGES = frozenset(
    {
        "English", "German", "French", "Spanish", "Portuguese", "Italian", "Dutch",
        "Danish", "Norwegian", "Swedish", "Finnish", "Indonesian", "Unknown",
    }
)  # fmt: skip
# Non-letter, non-ASCII characters that Western European cp1252 text commonly
# contains: dashes, curly quotes, ellipsis, bullet, euro sign, guillemets,
# degree sign, middle dot and non-breaking space.
_WESTERN_PUNCTUATION = frozenset(
    "\u2013\u2014\u2018\u2019\u201c\u201d\u2026\u2022\u20ac"
    "\u00ab\u00bb\u00b0\u00b7\u00a0"
)
_BINARY_REASON = (
    "contains NUL bytes and no UTF-16/UTF-32 byte order mark, so it looks "
    "like a binary file; exclude it or convert it to text"
)
_INT = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
# A decimal point or an exponent is required, so "007" stays a string.
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)"
)


@dataclass(frozen=True)
class Record:
    """One row of a record file: its 1-based line or row number and its fields.

    ``columns`` lists the header names of a CSV file, because its empty cells are
    left out of ``fields``; other formats leave it empty.
    """

    line: int
    fields: Mapping[str, Any]
    columns: tuple[str, ...] = ()


# --- decoding -----------------------------------------------------------------


def decode_bytes(data: bytes, source: str, declared: str | None = None) -> str:
    """Decode file content to text with ``\\n`` line endings, never replacing bytes.

    The order is: a UTF-8/16/32 byte order mark, strict UTF-8, the ``declared``
    charset (an HTML ``<meta charset>``), then charset-normalizer's guess.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _normalise_newlines(_strict_decode(data, encoding, source))
    if b"\x00" in data:
        raise LoadError(
            source,
            _BINARY_REASON,
        )
    try:
        return _normalise_newlines(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    if declared is not None:
        try:
            return _normalise_newlines(data.decode(declared))
        except (LookupError, UnicodeDecodeError):
            logger.debug("%s: declared charset %r does not decode it", source, declared)
    mixed = _decode_mixed_utf8(data, source)
    if mixed is not None:
        return _normalise_newlines(mixed)
    return _normalise_newlines(_decode_detected(data, source))


def _decode_mixed_utf8(data: bytes, source: str) -> str | None:
    """Decode UTF-8 text with stray single bytes, reading each stray byte as cp1252.

    Such files come from pasting Windows-1252 text into a UTF-8 file. Returns None
    unless the data holds at least one valid multi-byte UTF-8 sequence, because
    text without one is in a single-byte encoding that detection handles.
    """
    text = data.decode("utf-8", errors="surrogateescape")
    if not any("\x80" <= char < "\udc80" or char > "\udcff" for char in text):
        return None
    stray = 0
    parts = []
    for char in text:
        if "\udc80" <= char <= "\udcff":
            stray += 1
            byte = bytes([ord(char) - 0xDC00])
            # Five bytes are undefined in cp1252; Latin-1 maps them to C1 controls.
            try:
                char = byte.decode("cp1252")
            except UnicodeDecodeError:
                char = byte.decode("latin-1")
        parts.append(char)
    logger.info(
        "%s: decoded as UTF-8, reading %d invalid bytes as cp1252", source, stray
    )
    return "".join(parts)


def find_declared_charset(data: bytes) -> str | None:
    """Return the charset named by an HTML ``<meta>`` tag near the file start."""
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii") if match else None


def _strict_decode(data: bytes, encoding: str, source: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise LoadError(
            source,
            f"starts with a {encoding.upper()} byte order mark but is not valid "
            f"{encoding.upper()} at byte {exc.start}; re-save it in that encoding",
        ) from exc


def _decode_detected(data: bytes, source: str) -> str:
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if not matches:
        raise LoadError(
            source,
            "is not UTF-8 and its encoding could not be detected; "
            "convert it to UTF-8 or exclude it",
        )
    candidates = [match.encoding for match in matches]
    if _prefers_cp1252(matches) or _is_western_cp1252(data):
        candidates.insert(0, "cp1252")
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        logger.debug("%s: decoded as %s", source, encoding)
        return text
    raise LoadError(
        source,
        f"is not valid in any detected encoding ({', '.join(candidates)}); "
        "convert it to UTF-8 or exclude it",
    )


def _prefers_cp1252(matches: list[Any]) -> bool:
    """Return whether cp1252 should be tried before charset-normalizer's ranking.

    NOTE: on mostly-ASCII text with a few typographic bytes, charset-normalizer
    3.5 ranks DOS and Central European code pages level with cp1252 (it picks
    cp775 for an English speech whose only non-ASCII byte is a cp1252 em dash).
    cp1252 wins when it is among the least chaotic decodings and the detected
    language is one that cp1252 was made for, or is unknown (too little text),
    so Polish text stays cp1250.
    """
    least_chaos = min(match.chaos for match in matches)
    tied = [match for match in matches if match.chaos <= least_chaos]
    if not any("cp1252" in match.could_be_from_charset for match in tied):
        return False
    return matches[0].language in _CP1252_LANGUAGES


def _is_western_cp1252(data: bytes) -> bool:
    """Return whether ``data`` is valid cp1252 that reads as Western European text.

    Such text has only Latin-1 Supplement letters and common cp1252 punctuation
    outside ASCII. charset-normalizer 3.5 picks cp1250 or cp1257 for short
    French or German Latin-1 text, turning "crème" into "crčme". Central
    European text fails this test: cp1250 letters such as "ł" and "ą" read as
    "³" and "¹" under cp1252.
    """
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return all(
        char < "\x80" or char in _WESTERN_PUNCTUATION or _is_latin1_letter(char)
        for char in text
    )


def _is_latin1_letter(char: str) -> bool:
    return "\u00c0" <= char <= "\u00ff" and char not in "\u00d7\u00f7"


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: Path, source: str) -> str:
    """Read and decode a whole text file."""
    return decode_bytes(path.read_bytes(), source)


# Block size for reading large text files as a stream.
STREAM_BLOCK_BYTES = 1 << 20
# Bytes of a large file that encoding detection looks at.
_SNIFF_BYTES = 1 << 20
_CP1252_FALLBACK = "semsearch-cp1252"


def _cp1252_fallback(error: UnicodeError) -> tuple[str, int]:
    """Read each byte that is not UTF-8 as cp1252 (Latin-1 for its five gaps)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    chars = []
    for byte in error.object[error.start : error.end]:
        try:
            chars.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:
            chars.append(bytes([byte]).decode("latin-1"))
    return "".join(chars), error.end


codecs.register_error(_CP1252_FALLBACK, _cp1252_fallback)


def iter_text_blocks(path: Path, source: str) -> Iterator[str]:
    """Decode a text file block by block, with ``\\n`` line endings.

    The result joined is what :func:`read_text` returns for the same file, with
    one exception. UTF-8 with stray single bytes is recognised only when the
    first megabyte already contains valid multi-byte UTF-8, and encodings are
    detected from that megabyte. So such a file can decode differently, or fail
    with ``LoadError`` where :func:`read_text` would decode it. Memory stays at
    a few blocks whatever the file size. The encoding is chosen and checked over
    the whole file before the first block is yielded, so a file that cannot be
    decoded raises ``LoadError`` up front.
    """
    encoding, errors = _stream_encoding(path, source)
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    carry = ""
    with path.open("rb") as stream:
        while True:
            block = stream.read(STREAM_BLOCK_BYTES)
            text = carry + decoder.decode(block, final=not block)
            # A CR at the end of a block may be the first half of a CRLF.
            carry = "\r" if block and text.endswith("\r") else ""
            if carry:
                text = text[:-1]
            if text:
                yield _normalise_newlines(text)
            if not block:
                return


def _stream_encoding(path: Path, source: str) -> tuple[str, str]:
    """Return the codec name and error handler that decode the whole file."""
    with path.open("rb") as stream:
        sample = stream.read(_SNIFF_BYTES)
    for bom, encoding in _BOMS:
        if sample.startswith(bom):
            _check_stream(path, source, encoding, "strict")
            return encoding, "strict"
    if _contains_nul(path):
        raise LoadError(source, _BINARY_REASON)
    if _first_invalid_byte(path, "utf-8", "strict") is None:
        return "utf-8", "strict"

    # Cut the sample where a whole character ends, then decide as read_text does.
    head = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(sample)
    if any("\x80" <= char < "\udc80" or char > "\udcff" for char in head):
        logger.info("%s: decoded as UTF-8, reading invalid bytes as cp1252", source)
        return "utf-8", _CP1252_FALLBACK

    candidates = _detected_encodings(sample)
    for encoding in candidates:
        if _first_invalid_byte(path, encoding, "strict") is None:
            return encoding, "strict"

    if not candidates:
        raise LoadError(
            source,
            "is not UTF-8 and its encoding could not be detected; "
            "convert it to UTF-8 or exclude it",
        )
    raise LoadError(
        source,
        f"is not valid in any encoding detected from its start "
        f"({', '.join(candidates)}); convert it to UTF-8 or exclude it",
    )


def _contains_nul(path: Path) -> bool:
    with path.open("rb") as stream:
        while block := stream.read(STREAM_BLOCK_BYTES):
            if b"\x00" in block:
                return True
    return False


def _detected_encodings(sample: bytes) -> list[str]:
    """Return the encodings that decode ``sample``, in ``_decode_detected``'s order."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(sample))
    candidates = [match.encoding for match in matches]
    if matches and (_prefers_cp1252(matches) or _is_western_cp1252(sample)):
        candidates.insert(0, "cp1252")
    usable = []
    for encoding in dict.fromkeys(candidates):
        try:
            codecs.getincrementaldecoder(encoding)().decode(sample)
        except UnicodeDecodeError:
            continue
        usable.append(encoding)
    return usable


def _first_invalid_byte(path: Path, encoding: str, errors: str) -> int | None:
    """Return the offset of the first byte ``encoding`` rejects, or None."""
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    offset = 0
    with path.open("rb") as stream:
        while True:
            block = stream.read(STREAM_BLOCK_BYTES)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                return max(0, offset + exc.start)
            if not block:
                return None
            offset += len(block)


def _check_stream(path: Path, source: str, encoding: str, errors: str) -> None:
    where = _first_invalid_byte(path, encoding, errors)
    if where is not None:
        raise LoadError(
            source,
            f"is not valid {encoding.upper()} near byte {where}, although its start "
            "reads as that encoding; convert it to UTF-8 or exclude it",
        )


# --- markdown -----------------------------------------------------------------


def markdown_title(text: str) -> str | None:
    """Return the first level-1 heading (``# Title`` or ``Title`` over ``===``).

    Headings inside fenced code blocks and YAML front matter are ignored, but a
    ``title:`` line in the front matter is used when there is one.
    """
    lines = text.split("\n")
    start = 0
    if lines and lines[0].strip() == "---":
        end = _front_matter_end(lines)
        if end is not None:
            title = _front_matter_title(lines[1:end])
            if title:
                return title
            start = end + 1
    fence: str | None = None
    for index in range(start, len(lines)):
        stripped = lines[index].strip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        title = _heading_text(lines, index)
        if title:
            return title
    return None


def _front_matter_end(lines: list[str]) -> int | None:
    for index in range(1, len(lines)):
        if lines[index].strip() in ("---", "..."):
            return index
    return None


def _front_matter_title(lines: list[str]) -> str | None:
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "title":
            return value.strip().strip("\"'") or None
    return None


def _heading_text(lines: list[str], index: int) -> str | None:
    line = lines[index]
    if line.startswith("# ") or line.rstrip() == "#":
        return line[1:].strip().rstrip("#").strip() or None
    is_next_underline = index + 1 < len(lines) and re.fullmatch(
        r" {0,3}=+\s*", lines[index + 1]
    )
    if line.strip() and not line.startswith("    ") and is_next_underline:
        return line.strip()
    return None


# --- html ---------------------------------------------------------------------

# Elements whose content is never visible text or is page chrome.
_DROP_TAGS = frozenset(
    {
        "head", "script", "style", "noscript", "nav", "header", "footer", "aside",
        "form", "template", "button", "select", "svg", "iframe", "object", "canvas",
    }
)  # fmt: skip
_CHROME_ROLES = frozenset(
    {"navigation", "banner", "contentinfo", "search", "menu", "menubar"}
)
# Words in a class or id that mark navigation chrome. "nosearch" marks blocks a
# site search skips (the SQLite documentation wraps its menus and TOC in one).
_CHROME_WORDS = frozenset(
    {
        "nav", "navbar", "navigation", "menu", "mainmenu", "submenu", "searchmenu",
        "menubar", "breadcrumb", "breadcrumbs", "toc", "nosearch",
    }
)  # fmt: skip
_PARAGRAPH_TAGS = frozenset(
    {
        "address", "article", "blockquote", "caption", "details", "dialog", "div",
        "dl", "fieldset", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5",
        "h6", "hr", "main", "ol", "p", "pre", "section", "summary", "table", "ul",
    }
)  # fmt: skip
# Never dropped for their class or id, which sites use for page state.
_CONTENT_ROOTS = frozenset({"html", "body", "main", "article"})
_LINE_TAGS = frozenset({"br", "li", "tr", "dt", "dd"})
_CELL_TAGS = frozenset({"td", "th"})
# Layout tokens for the text assembler: a cell border, a line break, a paragraph.
_CELL, _LINE, _PARAGRAPH = 0, 1, 2


class _PreText(str):
    """Text inside ``<pre>``, whose spaces and newlines are kept."""


def html_to_text(markup: str) -> tuple[str | None, str]:
    """Extract ``(title, visible text)`` from an HTML page.

    Blocks become paragraphs separated by a blank line, list items and table rows
    become lines, table cells are joined with `` | ``, and whitespace is collapsed
    except inside ``<pre>``.
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    return _html_title(soup), _assemble(_layout_tokens(soup))


def _html_title(soup: Any) -> str | None:
    for tag_name in ("title", "h1"):
        tag = soup.find(tag_name)
        if tag is not None:
            title = " ".join(tag.get_text(" ").split())
            if title:
                return title
    return None


def _is_chrome(tag: Any) -> bool:
    if tag.name in _DROP_TAGS or tag.has_attr("hidden"):
        return True
    if tag.get("aria-hidden") == "true" or tag.get("role") in _CHROME_ROLES:
        return True
    if tag.name in _CONTENT_ROOTS:
        return False
    names = [*tag.get("class", []), tag.get("id") or ""]
    words = {word for name in names for word in re.split(r"[-_\s]+", name.lower())}
    return not words.isdisjoint(_CHROME_WORDS)


def _layout_tokens(soup: Any) -> Iterator[str | int]:
    """Walk the tree without recursion, yielding text pieces and layout tokens."""
    from bs4 import NavigableString, Tag
    from bs4.element import PreformattedString

    stack: list[tuple[Any, bool]] = [(soup, False)]
    pre_depth = 0
    while stack:
        node, closing = stack.pop()
        if closing:
            if node.name == "pre":
                pre_depth -= 1
            yield from _block_token(node.name, closing=True)
        elif isinstance(node, PreformattedString):
            continue  # comments, doctypes, CDATA and processing instructions
        elif isinstance(node, NavigableString):
            if pre_depth:
                yield _PreText(node)
            else:
                yield re.sub(r"\s+", " ", str(node))
        elif isinstance(node, Tag) and (node is soup or not _is_chrome(node)):
            if node.name == "pre":
                pre_depth += 1
            yield from _block_token(node.name, closing=False)
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.contents))


def _block_token(name: str, *, closing: bool) -> Iterator[int]:
    if name in _PARAGRAPH_TAGS:
        yield _PARAGRAPH
    elif name in _LINE_TAGS and (name == "br" or not closing):
        yield _LINE
    elif name in _CELL_TAGS and closing:
        yield _CELL


def _assemble(tokens: Iterator[str | int]) -> str:
    """Join text pieces, turning layout tokens into separators between text."""
    parts: list[str] = []
    pending: int | None = None
    for token in tokens:
        if isinstance(token, int):
            pending = token if pending is None else max(pending, token)
            continue
        if not isinstance(token, _PreText):
            at_line_start = not parts or pending is not None
            if at_line_start or parts[-1].endswith(" "):
                token = token.lstrip(" ")
        if not token:
            continue
        if parts and pending is not None:
            parts[-1] = parts[-1].rstrip(" ")
            parts.append({_CELL: " | ", _LINE: "\n", _PARAGRAPH: "\n\n"}[pending])
        pending = None
        parts.append(token)
    text = "".join(parts)
    text = re.sub(r"[ \t]*\n[ \t]*(?=\n)", "\n", text)  # blank-looking lines
    text = re.sub(r"\n{3,}", "\n\n", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


# --- pdf ----------------------------------------------------------------------


def read_pdf(path: Path, source: str) -> tuple[str | None, str]:
    """Extract ``(title, text)`` from a PDF with the optional pypdf package."""
    try:
        import pypdf
    except ImportError as exc:
        raise LoadError(
            source,
            "reading PDF files needs the optional pypdf package; "
            "install it with `pip install pypdf`",
        ) from exc

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(source, "is an encrypted PDF; decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata is not None else None
    except pypdf.errors.PyPdfError as exc:
        raise LoadError(source, f"is not a readable PDF ({exc}); repair it") from exc
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    return (title.strip() or None) if isinstance(title, str) else None, text


# --- records ------------------------------------------------------------------


def iter_jsonl_records(path: Path, source: str) -> Iterator[Record | LoadError]:
    """Stream the JSON objects of a JSON Lines file, one per non-blank line."""
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            encoding = "utf-8-sig" if number == 1 else "utf-8"
            try:
                line = raw.decode(encoding).strip()
                if not line:
                    continue
                value = json.loads(line)
            except UnicodeDecodeError as exc:
                yield LoadError(source, f"is not valid UTF-8 ({exc.reason})", number)
                continue
            except json.JSONDecodeError as exc:
                yield LoadError(source, f"is not valid JSON ({exc.msg})", number)
                continue
            if not isinstance(value, dict):
                kind = type(value).__name__
                yield LoadError(source, f"is a JSON {kind}, not an object", number)
                continue
            yield Record(number, value)


def iter_csv_records(path: Path, source: str) -> Iterator[Record | LoadError]:
    """Read a comma-separated file whose first row (row 1) is the header.

    Cells become ints, floats or booleans where they read as one (see
    :func:`parse_scalar`), and empty cells are left out.
    """
    # NOTE: the file is decoded whole, because the encoding must be detected
    # before any row is parsed; records are still yielded one at a time.
    text = decode_bytes(path.read_bytes(), source)
    # Text columns often exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows)
    except StopIteration:
        return
    names = [name.strip() for name in header]
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) > len(names):
            reason = f"has {len(row)} fields but the header has {len(names)}"
            yield LoadError(source, reason, number)
            continue
        fields = {name: parse_scalar(cell) for name, cell in zip(names, row) if cell}
        yield Record(number, fields, tuple(names))


def iter_parquet_records(
    path: Path, source: str, text_field: str
) -> Iterator[Record | LoadError]:
    """Stream the rows of a Parquet file in batches; rows are numbered from 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise LoadError(source, f"is not a readable Parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise LoadError(
            source,
            f"has no column {text_field!r} (columns: {', '.join(schema.names)}); "
            "choose the text column with --text-field (text_field= in Python)",
        )
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise LoadError(
            source,
            f"column {text_field!r} has type {column_type}, not string; "
            "choose a string column with --text-field (text_field= in Python)",
        )
    number = 0
    for batch in parquet.iter_batches(batch_size=512):
        for row in batch.to_pylist():
            number += 1
            yield Record(number, row)


# --- values -------------------------------------------------------------------


def parse_scalar(value: str) -> Any:
    """Convert ``"12"``, ``"1.5"``, ``"true"`` and ``"false"`` to Python values.

    Anything else stays a string, including numbers with leading zeros (``"007"``)
    and ``"nan"`` or ``"inf"``, which JSON cannot represent.
    """
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(value.strip()):
        return int(value)
    if _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def to_json_safe(value: Any) -> Any:
    """Convert a value to plain JSON types; return None for a missing value.

    NaN, infinity, NaT and None are missing. numpy and pyarrow scalars become
    Python values, dates and timestamps ISO 8601 strings, and durations seconds.
    Bytes and other types JSON cannot hold are missing too.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return None if _is_missing(value) else value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return _decimal_to_number(value)
    if isinstance(value, Mapping):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_safe(item) for item in value]
    return _foreign_to_json_safe(value)


def _is_missing(value: Any) -> bool:
    # pandas.NaT is a datetime subclass whose isoformat() is "NaT".
    try:
        return bool(value != value)  # noqa: PLR0124
    except (TypeError, ValueError):
        return False


def _decimal_to_number(value: Decimal) -> int | float | None:
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _foreign_to_json_safe(value: Any) -> Any:
    """Convert numpy, pyarrow and pandas values, which need their own accessors."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.datetime64):
            return None if np.isnat(value) else str(np.datetime_as_string(value))
        if isinstance(value, np.timedelta64):
            return None if np.isnat(value) else value / np.timedelta64(1, "s")
        return to_json_safe(value.tolist())
    if module == "pyarrow" and hasattr(value, "as_py"):
        return to_json_safe(value.as_py())
    if module == "pandas":
        import pandas as pd

        if pd.isna(value) is True:
            return None
    logger.debug("dropping metadata value of type %s", type(value).__name__)
    return None
