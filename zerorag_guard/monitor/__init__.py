"""The process-wide monitor: samples, levels, alerts, cleanup and health.

``monitor`` holds :class:`MemoryMonitor` (its figures in ``reports``, its thread in ``sampler``)
and ``process`` the process's one instance (``get_monitor``, ``configure``); around them, one
concern each: ``levels`` (readings to levels, with their alerts), ``thresholds`` (the three marks,
``auto`` and a budget's widening), ``trend`` (predictive alerts), ``alerts`` and ``episodes``
(alerts as episodes, listeners), ``cleanup`` and ``scheduling`` (light, standard and aggressive
cleanup within cool-downs), ``operations`` (guarded calls' statistics), ``health`` (the health
report) and ``hooks`` (what the parts above run when a monitor starts or stops). It reads memory
through :mod:`zerorag_guard.memory` and knows nothing of the budgets above it.
"""
