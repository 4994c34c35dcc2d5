"""The control socket: a running job's monitor, read and steered from outside.

``server`` opens a Unix socket per process (in the per-user run directory, mode 0600, the peer's
uid checked), ``requests`` answers what comes over it (health, alerts, settings, cleanup,
diagnostics), ``client`` is the other end that the command line uses, and ``diagnostics``
gathers what ``zerorag-guard debug`` shows. A front end: loaded when a monitor first starts.
"""
