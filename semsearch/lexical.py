"""Text analysis for BM25: lowercase word tokens, English stop words removed, stemmed.

semsearch analyses text itself and stores the result in the collection's lexical
field, so queries and documents are analysed the same way on every backend.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

_WORD = re.compile(r"\w+", re.UNICODE)

# A common English stop-word list (the Snowball project's short list).
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers herself him himself his how
    i if in into is it its itself just me more most my myself no nor not now of off on
    once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves""".split()
)


# Stems of words seen so far. Stemming runs in pure Python and dominated the
# cost of an upsert. Words repeat, so most of them are found here.
_STEMS: dict[str, str] = {}
_STEMS_MAX = 500_000
_STEMMER_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _stemmer():
    # The pure-Python English stemmer, never PyStemmer, which
    # snowballstemmer.stemmer() picks when it is installed. PyStemmer 3.0 stems
    # some words differently ("international" to "intern", not "internat"), and
    # documents and queries must be stemmed alike.
    from snowballstemmer.english_stemmer import EnglishStemmer

    return EnglishStemmer()


def analyze(text: str) -> list[str]:
    """Return the BM25 terms of ``text``."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]
    stems = {word: _STEMS.get(word) for word in words}
    unknown = [word for word, stem in stems.items() if stem is None]
    if unknown:
        # The stemmer keeps its working string in the object, so one thread
        # at a time may use it.
        with _STEMMER_LOCK:
            found = _stemmer().stemWords(unknown)
        stems.update(zip(unknown, found))
        if len(_STEMS) + len(unknown) > _STEMS_MAX:
            _STEMS.clear()
        _STEMS.update(zip(unknown, found))
    return [stems[word] for word in words]


def lexical_text(text: str) -> str:
    """Return the analysed terms of ``text`` joined by spaces, for the lexical field."""
    return " ".join(analyze(text))
