"""Integrations of zerorag_guard with other engines: vector stores, Dask distributed, Prometheus.

One module each (``vectorstores``, ``dask``, ``prometheus``), imported by name. Nothing is
imported here, so ``import zerorag_guard.integrations`` never needs an optional package.
"""
