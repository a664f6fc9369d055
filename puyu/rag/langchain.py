"""The knowledge base as a LangChain retriever, and its embedder as LangChain embeddings.

Contract: :class:`KnowledgeBaseRetriever` is a ``langchain_core`` ``BaseRetriever``
over :meth:`puyu.rag.KnowledgeBase.search`: ``invoke(query)`` returns the ``k``
best chunks as LangChain ``Document`` objects (``page_content`` the chunk text,
``id`` the chunk id, ``metadata`` the citation fields, ``location``, ``score``
and ``similarity``), so puyu's hybrid search, path filters, MMR and reranker
plug into any LangChain chain (LCEL or the classic ``RetrievalQA``).
:class:`KnowledgeBaseEmbeddings` is LangChain ``Embeddings`` over the knowledge
base's own embedder, which is what ``langchain-chroma`` needs to open puyu's
Chroma collection directly (``collection_name="chunks"``, ``persist_directory``
the knowledge base's ``chroma/`` folder; read it, let ``puyu kb build`` write
it).  Needs ``langchain-core``; this module is imported only when used.

>>> from puyu.rag import KnowledgeBase
>>> from puyu.rag.langchain import KnowledgeBaseRetriever
>>> retriever = KnowledgeBaseRetriever(kb=KnowledgeBase.open("lmdeploy"), k=3, search={"mode": "hybrid"})
>>> retriever.invoke("How do I start the api_server?")[0].metadata["location"]
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field


class KnowledgeBaseRetriever(BaseRetriever):
    """Retrieves chunks of a puyu knowledge base.

    Attributes:
        kb: an open :class:`~puyu.rag.KnowledgeBase`.
        k: chunks per query.
        search: further :meth:`~puyu.rag.KnowledgeBase.search` options (``mode``, ``paths``, ``mmr``, ``reranker``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kb: Any
    k: int = 5
    search: dict[str, Any] = Field(default_factory=dict)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        documents = []
        for hit in self.kb.search(query, self.k, **self.search):
            fields = hit.to_dict()
            text, chunk_id = fields.pop("text"), fields.pop("id")
            metadata = {key: value for key, value in fields.items() if value is not None}
            documents.append(Document(page_content=text, id=chunk_id, metadata=metadata))
        return documents


class KnowledgeBaseEmbeddings(Embeddings):
    """LangChain embeddings from a knowledge base's embedder (unit-length vectors of its dimension).

    Args:
        kb: an open :class:`~puyu.rag.KnowledgeBase`.
    """

    def __init__(self, kb: Any):
        self.kb = kb

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.kb.embedder.embed(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
