"""The RAG job the product is for: the demo, its embedders and the vector-store service.

``demo`` ingests the standard library's own source under a budget (``zerorag-guard demo``),
``embedders`` turns texts into vectors (a hashing embedder, or all-MiniLM-L6-v2 offline), and
``vector_store`` is the guide's ``VectorStoreService`` (chroma, qdrant or faiss) ingesting in a
budget's adaptive batches.
"""
