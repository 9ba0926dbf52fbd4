"""Retrievers for RAG frameworks, each behind its own optional extra.

``semsearch.integrations.langchain`` needs ``semsearch[langchain]`` and
``semsearch.integrations.llamaindex`` needs ``semsearch[llamaindex]``.
"""
