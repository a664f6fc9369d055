"""The knowledge-base assistant (RAG): loaders, splitter, embeddings, Chroma store, hybrid retrieval, cited answers, eval.

``KnowledgeBase`` is the entry point (``create``/``open``, ``build``, ``search``,
``ask``/``ask_stream``, ``stats``); ``Hit`` is a retrieved chunk with its
citation metadata; ``Answer`` a checked, cited answer (generated, extracted, or
generated with an extractive fallback).  :mod:`puyu.rag.langchain` (imported
only when used) adapts a knowledge base to LangChain.
"""

from puyu.rag.answer import Answer, AnswerStream, Citation, check_citations
from puyu.rag.kb import KnowledgeBase, list_kbs, remove_kb
from puyu.rag.retrieval import Hit
from puyu.rag.sync import SyncReport

__all__ = ["Answer", "AnswerStream", "Citation", "Hit", "KnowledgeBase", "SyncReport", "check_citations", "list_kbs", "remove_kb"]
