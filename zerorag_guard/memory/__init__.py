"""Memory readings: what the kernel says this process, its groups and its machine use and may use.

The lowest layer, below the monitor. ``probes`` reads RSS and exact peaks (``/proc``, the kernel's
high-water marks), ``limits`` the effective limit (host, cgroup, rlimit), ``cgroups`` the cgroup
v1 and v2 trees, ``group`` a process tree's, a container's and the host's readings and their
pressure (PSI), and ``ledger`` the reservations by which loops and processes share one headroom.
Nothing here acts on memory: these modules read and record.
"""
