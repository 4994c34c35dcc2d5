"""Integrations of zerorag_guard with other engines: vector stores, Dask distributed, Prometheus."""
