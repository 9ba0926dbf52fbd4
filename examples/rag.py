"""Retrieve context for a question and print the prompt an LLM would get.

No LLM is called: pipe the output to one, or read it to judge the retrieval.

    semsearch --uri demo.db ingest samples/ --exclude README.md --exclude 'LICENSES/*'
    python examples/rag.py --uri demo.db "How does SQLite make a transaction atomic?"
"""

from __future__ import annotations

import argparse
import sys

from semsearch import SemanticSearch, SemsearchError, format_context

PROMPT = """\
Answer the question using only the numbered context below. Cite the blocks you
use by number, like [2]. If the context does not contain the answer, say so.

Context:

{context}

Question: {question}
Answer:"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", help="The question to answer.")
    parser.add_argument(
        "--uri", default="./semsearch.db", help="Milvus Lite file or server URI."
    )
    parser.add_argument("--collection", default="semsearch", help="Collection name.")
    parser.add_argument(
        "-k", type=int, default=4, help="Number of chunks in the context."
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=6000,
        help="Maximum length of the context in characters.",
    )
    parser.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default="dense")
    parser.add_argument("--filter", help="Milvus boolean expression.")
    return parser.parse_args(argv)


def build_prompt(engine: SemanticSearch, args: argparse.Namespace) -> str:
    """Retrieve the chunks for the question and wrap them in the prompt."""
    hits = engine.search(args.question, k=args.k, filter=args.filter, mode=args.mode)
    context = format_context(hits, max_chars=args.max_chars)
    return PROMPT.format(
        context=context or "(no matching chunks)", question=args.question
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with SemanticSearch(uri=args.uri, collection=args.collection) as engine:
            print(build_prompt(engine, args))
    except SemsearchError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
