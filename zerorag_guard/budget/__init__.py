"""Budgets: work split into memory-aware batches under a ceiling.

``budget`` holds :class:`MemoryBudget` (the ceiling, entering and leaving, nesting), ``settings``
its checked arguments and the default ceiling, ``policy`` what it does at the ceiling
(``on_exceed``), ``chunking`` the loop that hands out batches, ``sizing`` the cost model that
sizes them, ``scope`` the headroom a budget shares (process, tree, container), ``checkpoint`` the
cursor a job resumes from, ``isolation``, ``pool``, ``worker`` and ``worker_cap`` the calls run in
capped worker processes, ``guarded`` the front doors ``memory_budget()`` and ``@memory_guarded``,
``guard`` the guard around one call, and ``writes`` a store's writes sized under the budget. It
stands on the monitor and the memory readings.
"""
