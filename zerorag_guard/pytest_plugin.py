"""The ``pytest11`` entry point: the plugin of :mod:`zerorag_guard.pytest.plugin` (hooks, markers
and fixtures) under the name it has always had, so ``-p zerorag_guard.pytest_plugin`` and the
entry point load it as before."""

from .pytest.plugin import *  # noqa: F403
