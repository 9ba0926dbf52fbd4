"""Loading: walk files and folders and turn each file or record into a Document.

Loading streams: documents are yielded one at a time, and one unreadable file or
record is reported through ``on_skip`` (or a warning) without stopping the rest.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semsearch import formats
from semsearch.errors import ConfigError, LoadError
from semsearch.types import Document

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {
        ".txt", ".text", ".md", ".markdown", ".html", ".htm",
        ".jsonl", ".ndjson", ".csv", ".parquet", ".pdf",
    }
)  # fmt: skip
_FORMATS: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pdf": "pdf",
}
_RECORD_FORMATS = frozenset({"jsonl", "csv", "parquet"})
_STREAMED_FORMATS = frozenset({"text", "markdown"})
MANIFEST_NAME = "manifest.jsonl"
# Manifest keys that describe the file itself, not the document, so they are not
# copied into metadata. "path" locates the file and "title" becomes the title.
_MANIFEST_SKIP_KEYS = frozenset(
    {"path", "title", "sha256", "bytes", "format", "id", "license", "source"}
)
_DEFAULT_ID_FIELDS = ("id", "_id")
_META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The default skip handler logs this many warnings per call, then only a count.
_MAX_SKIP_WARNINGS = 20
# Text and Markdown files larger than this many bytes are read as a stream and
# split into sections of at most this many characters, each its own document.
SECTION_CHARS = 1_000_000
# A section ends at the last paragraph break, else line break, else space in
# its final tenth, so sections stay close to SECTION_CHARS.
_SECTION_CUT_WINDOW = 0.1
_SECTION_BREAKS = ("\n\n", "\n", " ")


@dataclass(frozen=True)
class SkippedInput:
    """A file or record that was not loaded, and why.

    ``source`` is the path relative to the ingest root (the file name for a file
    given directly), and ``line`` the 1-based JSONL line or CSV row (the header is
    row 1) of a bad record.
    """

    source: str
    reason: str
    line: int | None = None


@dataclass(frozen=True)
class _ManifestEntry:
    title: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class _Glob:
    """A compiled include or exclude pattern.

    ``by_name`` is set for a pattern without ``/``, which matches the file name at
    any depth instead of the relative path.
    """

    regex: re.Pattern[str]
    by_name: bool

    def matches(self, source: str) -> bool:
        target = posixpath.basename(source) if self.by_name else source
        return self.regex.fullmatch(target) is not None


@dataclass
class _Options:
    """Settings shared by every file of one ``iter_documents`` call."""

    include: list[_Glob]
    exclude: list[_Glob]
    text_field: str
    id_field: str | None
    title_field: str | None
    extra_metadata: dict[str, Any]
    report: Callable[[SkippedInput], None]
    manifests: dict[str, _ManifestEntry] = field(default_factory=dict)
    section_chars: int = SECTION_CHARS


def iter_documents(
    paths: Iterable[str | os.PathLike[str]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    text_field: str = "text",
    id_field: str | None = None,
    title_field: str | None = "title",
    extra_metadata: Mapping[str, Any] | None = None,
    on_skip: Callable[[SkippedInput], None] | None = None,
    section_chars: int | None = None,
) -> Iterator[Document]:
    """Stream documents from files and folders (recursive), one at a time.

    Folders are walked in sorted order, skipping hidden entries. ``include`` and
    ``exclude`` are glob patterns: one containing ``/`` matches the path relative
    to the folder (``*`` stays within a folder, ``**`` spans folders), and one
    without ``/`` matches the file name at any depth. Files with an unsupported
    suffix inside folders are ignored. A ``manifest.jsonl`` with ``path`` keys in
    a walked folder supplies titles and metadata for the files it lists.

    A text or Markdown file larger than ``section_chars`` bytes (default
    ``SECTION_CHARS``) is decoded as a stream and split at paragraph breaks into sections of at most
    ``section_chars`` characters. Each section is a document: the first keeps
    the file's id, section ``n`` gets ``<source>#section-<n>``, and its metadata
    holds ``section`` and ``section_start`` (its first character's offset in the
    file's text), so memory stays bounded whatever the file size.

    Raises:
        LoadError: a path does not exist.
        ConfigError: ``section_chars`` is smaller than 1.
    """
    section_chars = _check_section_chars(section_chars)
    warnings = _SkipWarnings()
    options = _Options(
        include=[_compile_glob(pattern) for pattern in include],
        exclude=[_compile_glob(pattern) for pattern in exclude],
        text_field=text_field,
        id_field=id_field,
        title_field=title_field,
        extra_metadata=dict(extra_metadata or {}),
        report=on_skip or warnings,
        section_chars=section_chars,
    )
    # Check every path before loading any, so a typo fails before work starts.
    given = [Path(raw) for raw in paths]
    for path in given:
        if not path.exists():
            reason = "file or folder not found; check the path and retry"
            raise LoadError(os.fspath(path), reason)
    for path in given:
        if path.is_dir():
            yield from _load_folder(path, options)
        else:
            yield from _load_given_file(path, options)
    warnings.summarise()


def count_documents(
    paths: Iterable[str | os.PathLike[str]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    section_chars: int | None = None,
) -> int | None:
    """Return how many documents ``iter_documents`` will yield, or None if unknown.

    The count walks the folders without reading any file, so it is exact only when
    every input contains one document: a JSONL, CSV or Parquet file contains an unknown
    number of records, and a text file larger than ``section_chars`` an unknown
    number of sections, and then the result is None. A ``manifest.jsonl`` is not
    counted. Missing paths count as nothing; ``iter_documents`` reports them.
    """
    limit = _check_section_chars(section_chars)
    options = _Options(
        include=[_compile_glob(pattern) for pattern in include],
        exclude=[_compile_glob(pattern) for pattern in exclude],
        text_field="text",
        id_field=None,
        title_field=None,
        extra_metadata={},
        report=lambda skipped: None,
    )
    total = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = _count_walk(path, path)
        elif path.is_file():
            candidates = [(path, path.name)]
        else:
            continue
        for file_path, source in candidates:
            if not _is_selected(source, options):
                continue
            kind = _FORMATS.get(file_path.suffix.lower())
            if kind in _RECORD_FORMATS:
                return None
            if kind in _STREAMED_FORMATS and _is_large(file_path, limit):
                return None
            total += 1
    return total


def _check_section_chars(section_chars: int | None) -> int:
    """Return ``section_chars``, or the default for None; reject sizes below 1."""
    if section_chars is None:
        return SECTION_CHARS
    if section_chars < 1:
        raise ConfigError(
            f"invalid section size {section_chars}: use at least 1 character"
        )
    return section_chars


def _count_walk(root: Path, folder: Path) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for current, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            path = Path(current) / name
            if name.startswith(".") or name == MANIFEST_NAME:
                continue
            if path.suffix.lower() in SUPPORTED_SUFFIXES:
                found.append((path, _relative(root, path)))
    return found


def parse_meta_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into metadata, later keys winning.

    Values stay strings, except integers, decimal numbers, ``true`` and ``false``.

    Raises:
        ConfigError: a pair has no ``=`` or its key is not an identifier.
    """
    metadata: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"invalid metadata pair {pair!r}: write it as key=value")
        if not _META_KEY.fullmatch(key):
            raise ConfigError(
                f"invalid metadata key {key!r} in {pair!r}: use letters, digits "
                "and underscores, not starting with a digit"
            )
        metadata[key] = formats.parse_scalar(value)
    return metadata


# --- walking ------------------------------------------------------------------


class _SkipWarnings:
    """Default skip handler: a warning per skip, up to a limit, then a count."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, skipped: SkippedInput) -> None:
        self.count += 1
        if self.count <= _MAX_SKIP_WARNINGS:
            where = skipped.source
            if skipped.line is not None:
                where = f"{where}:{skipped.line}"
            logger.warning("skipped %s: %s", where, skipped.reason)
        if self.count == _MAX_SKIP_WARNINGS + 1:
            logger.warning("more inputs were skipped; not logging each one")

    def summarise(self) -> None:
        if self.count > _MAX_SKIP_WARNINGS:
            logger.warning("skipped %d inputs in total", self.count)


def _load_folder(root: Path, options: _Options) -> Iterator[Document]:
    for path, source in _walk(root, root, options):
        if _is_selected(source, options):
            yield from _load_file(path, source, options)


def _load_given_file(path: Path, options: _Options) -> Iterator[Document]:
    source = path.name
    if not _is_selected(source, options):
        return
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        reason = (
            f"unsupported file type {path.suffix or path.name!r}; "
            f"supported: {supported}"
        )
        options.report(SkippedInput(source, reason))
        return
    yield from _load_file(path, source, options)


def _walk(root: Path, folder: Path, options: _Options) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, source)`` for supported files under ``folder``, sorted."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        source = _relative(root, folder)
        options.report(SkippedInput(source, f"folder cannot be read ({exc})"))
        return
    names = {entry.name for entry in entries}
    manifest_source = _relative(root, folder / MANIFEST_NAME)
    is_manifest = False
    if MANIFEST_NAME in names and not _matches(manifest_source, options.exclude):
        is_manifest = _read_manifest(folder / MANIFEST_NAME, manifest_source, options)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root, path, options)
        elif entry.is_symlink() and entry.is_dir():
            logger.debug("not following symlinked folder %s", path)
        elif is_manifest and entry.name == MANIFEST_NAME:
            continue
        elif entry.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
            yield path, _relative(root, path)
        else:
            logger.debug("ignoring unsupported file %s", path)


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _is_selected(source: str, options: _Options) -> bool:
    if options.include and not _matches(source, options.include):
        return False
    return not _matches(source, options.exclude)


def _matches(source: str, patterns: list[_Glob]) -> bool:
    return any(pattern.matches(source) for pattern in patterns)


def _compile_glob(pattern: str) -> _Glob:
    """Translate a glob with ``**`` into a regular expression over POSIX paths."""
    pattern = pattern.strip().removeprefix("./")
    if pattern.endswith("/"):
        pattern += "**"
    return _Glob(_glob_regex(pattern), by_name="/" not in pattern)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        else:
            token, index = _glob_token(pattern, index)
            parts.append(token)
    return re.compile("".join(parts), re.DOTALL)


def _glob_token(pattern: str, index: int) -> tuple[str, int]:
    char = pattern[index]
    if char == "*":
        return "[^/]*", index + 1
    if char == "?":
        return "[^/]", index + 1
    if char == "[":
        end = pattern.find("]", index + 2)
        if end != -1:
            body = pattern[index + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^/" + body[1:]
            return f"[{body}]", end + 1
    if char == "/":
        return "/", index + 1
    return re.escape(char), index + 1


# --- manifests ----------------------------------------------------------------


def _read_manifest(path: Path, source: str, options: _Options) -> bool:
    """Load a folder's manifest into ``options.manifests``.

    Returns whether the file is a manifest, meaning at least one line has a
    ``path`` key. Otherwise it is left to load as an ordinary JSON Lines file.
    """
    entries: dict[str, _ManifestEntry] = {}
    problems: list[SkippedInput] = []
    try:
        records = list(formats.iter_jsonl_records(path, source))
    except OSError as exc:
        options.report(SkippedInput(source, f"manifest cannot be read ({exc})"))
        return True
    for record in records:
        if isinstance(record, LoadError):
            reason = f"manifest line {record.reason}; fix or remove it"
            problems.append(SkippedInput(source, reason, record.line))
            continue
        key, entry, reason = _manifest_entry(path.parent, record)
        if reason is not None:
            problems.append(SkippedInput(source, reason, record.line))
        elif key is not None and entry is not None:
            entries[key] = entry
    if not entries:
        return False
    for problem in problems:
        options.report(problem)
    options.manifests.update(entries)
    return True


def _manifest_entry(
    folder: Path, record: formats.Record
) -> tuple[str | None, _ManifestEntry | None, str | None]:
    """Return ``(file key, entry, None)`` or ``(None, None, reason)``."""
    listed = record.fields.get("path")
    if not isinstance(listed, str) or not listed.strip():
        return None, None, "manifest line has no 'path' string; add one or remove it"
    title = record.fields.get("title")
    metadata = {}
    for key, value in record.fields.items():
        converted = formats.to_json_safe(value)
        if key not in _MANIFEST_SKIP_KEYS and converted is not None:
            metadata[key] = converted
    is_title = isinstance(title, str) and title.strip()
    entry = _ManifestEntry(title.strip() if is_title else None, metadata)
    return _file_key(folder / listed), entry, None


def _file_key(path: Path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


# --- files --------------------------------------------------------------------


def _load_file(path: Path, source: str, options: _Options) -> Iterator[Document]:
    """Load one file, reporting instead of raising when it cannot be read."""
    kind = _FORMATS[path.suffix.lower()]
    try:
        base = {"format": kind, "modified": _modified(path)}
        if kind in _RECORD_FORMATS:
            yield from _load_records(path, source, kind, base, options)
        elif kind in _STREAMED_FORMATS and _is_large(path, options.section_chars):
            yield from _load_sections(path, source, kind, base, options)
        else:
            document = _load_text_file(path, source, kind, base, options)
            if document is not None:
                yield document
    except LoadError as exc:
        options.report(SkippedInput(source, exc.reason, exc.line))
    except (OSError, ValueError, csv.Error) as exc:
        logger.debug("failed to load %s", source, exc_info=True)
        options.report(SkippedInput(source, f"cannot be read ({exc})"))


def _modified(path: Path) -> str:
    mtime = path.stat().st_mtime
    stamp = dt.datetime.fromtimestamp(mtime, tz=dt.timezone.utc)
    return stamp.isoformat(timespec="seconds")


def _load_text_file(
    path: Path, source: str, kind: str, base: dict[str, Any], options: _Options
) -> Document | None:
    title, text = _read_text_format(path, source, kind)
    if not text.strip():
        options.report(SkippedInput(source, "empty document; it has no text to index"))
        return None
    entry = options.manifests.get(_file_key(path))
    metadata = dict(entry.metadata) if entry else {}
    if entry and entry.title:
        title = entry.title
    metadata.update(base)
    metadata.update(options.extra_metadata)
    return _make_document(source, source, title or path.stem, text, metadata)


def _is_large(path: Path, section_chars: int) -> bool:
    try:
        return path.stat().st_size > section_chars
    except OSError:
        return False


def _load_sections(
    path: Path, source: str, kind: str, base: dict[str, Any], options: _Options
) -> Iterator[Document]:
    """Yield the sections of a large text or Markdown file as documents.

    Sections with no visible text are left out; the numbering still counts them,
    so the ids of the other sections do not move.
    """
    entry = options.manifests.get(_file_key(path))
    title = entry.title if entry and entry.title else None
    visible = False
    start = 0
    blocks = formats.iter_text_blocks(path, source)
    for number, text in enumerate(split_sections(blocks, options.section_chars), 1):
        if number == 1 and title is None and kind == "markdown":
            title = formats.markdown_title(text)
        if text.strip():
            visible = True
            metadata = dict(entry.metadata) if entry else {}
            metadata.update(base)
            metadata.update(options.extra_metadata)
            metadata.update({"section": number, "section_start": start})
            doc_id = source if number == 1 else f"{source}#section-{number}"
            yield _make_document(doc_id, source, title or path.stem, text, metadata)
        start += len(text)
    if not visible:
        options.report(SkippedInput(source, "empty document; it has no text to index"))


def split_sections(blocks: Iterable[str], section_chars: int) -> Iterator[str]:
    """Regroup text blocks into sections of at most ``section_chars`` characters.

    A section ends after the last paragraph break in its final tenth, else the
    last line break, else the last space, else at exactly ``section_chars``.
    Joined, the sections are the input text.
    """
    if section_chars < 1:
        raise ConfigError(f"section size must be at least 1, got {section_chars}")
    buffer = ""
    for block in blocks:
        buffer += block
        start = 0
        while len(buffer) - start > section_chars:
            cut = _section_cut(buffer, start, section_chars)
            yield buffer[start:cut]
            start = cut
        buffer = buffer[start:]
    if buffer:
        yield buffer


def _section_cut(text: str, start: int, section_chars: int) -> int:
    limit = start + section_chars
    floor = limit - max(1, int(section_chars * _SECTION_CUT_WINDOW))
    for separator in _SECTION_BREAKS:
        found = text.rfind(separator, floor, limit)
        if found > start:
            return found + len(separator)
    return limit


def _read_text_format(path: Path, source: str, kind: str) -> tuple[str | None, str]:
    if kind == "pdf":
        return formats.read_pdf(path, source)
    if kind == "html":
        data = path.read_bytes()
        declared = formats.find_declared_charset(data)
        return formats.html_to_text(formats.decode_bytes(data, source, declared))
    text = formats.read_text(path, source)
    if kind == "markdown":
        return formats.markdown_title(text), text
    return None, text


def _make_document(
    doc_id: str, source: str, title: str, text: str, metadata: dict[str, Any]
) -> Document:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Document(doc_id, source, title, text, digest, metadata)


# --- records ------------------------------------------------------------------


def _load_records(
    path: Path, source: str, kind: str, base: dict[str, Any], options: _Options
) -> Iterator[Document]:
    records: Iterator[formats.Record | LoadError]
    if kind == "jsonl":
        records = formats.iter_jsonl_records(path, source)
    elif kind == "csv":
        records = formats.iter_csv_records(path, source)
    else:
        records = formats.iter_parquet_records(path, source, options.text_field)
    seen_ids: set[str] = set()
    for record in records:
        if isinstance(record, LoadError):
            options.report(SkippedInput(source, record.reason, record.line))
            continue
        try:
            document = _record_document(record, source, base, options)
        except LoadError as exc:
            options.report(SkippedInput(source, exc.reason, record.line))
            continue
        if document.id in seen_ids:
            reason = f"duplicate record id {document.id!r}; make the ids unique"
            options.report(SkippedInput(source, reason, record.line))
            continue
        seen_ids.add(document.id)
        yield document


def _record_document(
    record: formats.Record, source: str, base: dict[str, Any], options: _Options
) -> Document:
    """Build a Document from one record, raising LoadError if the record is bad."""
    text = _record_text(record, source, options.text_field)
    record_id = _record_id(record, source, options.id_field)
    title = _record_title(record, options.title_field)
    doc_id = f"{source}#{record_id}"

    metadata: dict[str, Any] = {}
    skip_keys = {options.text_field, options.title_field}
    for key, value in record.fields.items():
        converted = formats.to_json_safe(value)
        if key not in skip_keys and converted is not None:
            metadata[str(key)] = converted
    metadata.update(base)
    metadata.update(options.extra_metadata)
    return _make_document(doc_id, source, title or doc_id, text, metadata)


def _record_text(record: formats.Record, source: str, text_field: str) -> str:
    empty_reason = f"empty document; the {text_field!r} field is empty in this record"
    if text_field not in record.fields:
        if text_field in record.columns:
            raise LoadError(source, empty_reason)
        available = ", ".join(map(str, record.fields)) or "none"
        raise LoadError(
            source,
            f"record has no {text_field!r} field (fields: {available}); "
            "choose the text field with --text-field (text_field= in Python)",
        )
    text = record.fields[text_field]
    if text is None:
        raise LoadError(source, empty_reason)
    if not isinstance(text, str):
        kind = type(text).__name__
        raise LoadError(source, f"field {text_field!r} has type {kind}, not str")
    if not text.strip():
        raise LoadError(source, f"empty document; the {text_field!r} field is blank")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        reason = "text contains an unpaired surrogate escape; fix the record"
        raise LoadError(source, reason) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _record_id(record: formats.Record, source: str, id_field: str | None) -> str:
    if id_field is not None:
        value = record.fields.get(id_field)
        if not _is_usable_id(value):
            raise LoadError(
                source,
                f"record has no usable {id_field!r} id (a non-empty string or an "
                f"integer), got {value!r}; fill it in or choose another id field",
            )
        return str(value)
    for key in _DEFAULT_ID_FIELDS:
        value = record.fields.get(key)
        if _is_usable_id(value):
            return str(value)
    return f"line-{record.line}"


def _is_usable_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int)


def _record_title(record: formats.Record, title_field: str | None) -> str | None:
    if title_field is None:
        return None
    title = record.fields.get(title_field)
    if isinstance(title, str) and title.strip():
        return " ".join(title.split())
    return None
