"""The pytest plugin: memory budgets and leak checks for tests.

``plugin`` holds the hooks, markers and fixtures (the ``pytest11`` entry point names
:mod:`zerorag_guard.pytest_plugin`, which re-exports it); ``report`` what one test's memory
was and how a failure and the ``--memory-report`` table tell it.
"""
