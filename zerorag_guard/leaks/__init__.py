"""The leak profiler: memory that grows per iteration, and where.

``profiler`` runs a function or a block again and again and takes a census of live objects
(pympler) and allocation sites (tracemalloc), ``fit`` tells growth from noise (a robust line
over the steps), ``report`` holds :class:`LeakReport` and its rendering. It stands on the
monitor (held while it measures) and the memory readings, and knows nothing of budgets.
"""
