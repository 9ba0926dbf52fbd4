"""Build Milvus boolean expressions from user input without injection."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import FilterError

# Columns of the collection schema by Milvus type; any other key is looked up
# in the JSON ``metadata`` field. Milvus rejects a comparison of an INT64 column
# with a string, so each column is compared with values of its own type only.
INT_FIELDS = frozenset({"ordinal", "chunk_count", "char_start", "char_end"})
VARCHAR_FIELDS = frozenset({"id", "doc_id", "source", "title", "doc_hash"})
SCALAR_FIELDS = INT_FIELDS | VARCHAR_FIELDS

_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_INT_PATTERN = re.compile(r"^[+-]?\d+$")
_FLOAT_PATTERN = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def quote_string(value: str) -> str:
    """Return ``value`` as a double-quoted Milvus string literal.

    Backslashes, quotes and control characters are escaped, so the literal always
    ends where it should and the expression around it cannot be widened.
    """
    out = ['"']
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def field_reference(key: str) -> str:
    """Return the expression that reads ``key``: a column or a ``metadata`` path."""
    if not _KEY_PATTERN.match(key):
        raise FilterError(
            f"invalid filter key {key!r}: use letters, digits and underscores, "
            "with dots for nested metadata (for example year or author.name)"
        )
    if key in SCALAR_FIELDS:
        return key
    path = "".join(f"[{quote_string(part)}]" for part in key.split("."))
    return f"metadata{path}"


def literal(value: Any) -> str:
    """Return a Milvus literal for a Python scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"invalid filter value {value!r}: use a finite number")
        return repr(value)
    if isinstance(value, str):
        return quote_string(value)
    raise FilterError(
        f"invalid filter value {value!r} of type {type(value).__name__}: "
        "use a string, number or boolean"
    )


def equality(key: str, value: Any) -> str:
    """Return a condition that ``key`` equals ``value``.

    A string that reads as a number or boolean (as ``--where year=1961`` gives)
    matches both the typed value and the string in metadata, because metadata
    from text sources may hold either. Schema columns are compared with their
    own type only, and a non-integer value for an integer column raises
    FilterError.
    """
    field = field_reference(key)
    if key in INT_FIELDS:
        return f"{field} == {_integer_literal(key, value)}"
    if key in VARCHAR_FIELDS:
        text = value if isinstance(value, str) else literal(value)
        return f"{field} == {quote_string(text)}"
    if not isinstance(value, str):
        return f"{field} == {literal(value)}"

    alternatives = [f"{field} == {quote_string(value)}"]
    if _INT_PATTERN.match(value):
        alternatives.append(f"{field} == {int(value)}")
    elif _FLOAT_PATTERN.match(value):
        alternatives.append(f"{field} == {float(value)!r}")
    elif value.lower() in ("true", "false") and field != key:
        alternatives.append(f"{field} == {value.lower()}")
    if len(alternatives) == 1:
        return alternatives[0]
    return "(" + " or ".join(alternatives) + ")"


def _integer_literal(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and _INT_PATTERN.match(value.strip()):
        return str(int(value))
    raise FilterError(
        f"invalid filter value {value!r} for {key}: {key} is an integer column, "
        "so use an integer"
    )


def parse_where(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` strings from the command line."""
    conditions: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FilterError(
                f"invalid --where condition {pair!r}: write it as key=value"
            )
        conditions[key.strip()] = value
    return conditions


def combine(expression: str | None, where: Mapping[str, Any] | None = None) -> str:
    """AND a raw Milvus expression with equality conditions; "" means no filter."""
    parts = []
    if expression and expression.strip():
        parts.append(f"({expression.strip()})")
    for key, value in (where or {}).items():
        parts.append(equality(key, value))
    return " and ".join(parts)
