"""The thresholds in force: from the settings, derived from the container, or widened by a budget.

The monitor's three marks (preventive, main, critical) come from one of:

- **the settings**: ``MEMORY_THRESHOLD_MB`` and ``MEMORY_CRITICAL_THRESHOLD_MB``;
- **auto** (either setting, or both, given as ``auto``): the product guide's adaptive thresholds,
  from the effective limit ``L`` (host RAM, the container's cgroup, rlimits) and the process's
  steady memory ``S`` (its baseline between batches: a loaded model is part of it, not a leak)::

      critical   = 90% of L                    (the guard acts before the kernel does)
      main       = S + 3/4 x (critical - S)    (above the baseline, room to act before critical)
      preventive = preventive_ratio x main     (80% by default)

  With only one of them ``auto`` the other keeps its number: ``main`` is then derived under the
  given critical, or ``critical`` is 90% of ``L`` above the given main. They are derived again
  when the limit changes (a container resized live) or ``S`` moves by more than
  :data:`STEADY_MOVE`;
- **a budget the user set**: while a ``memory_budget`` whose ceiling ``C`` is above the main
  threshold is active, memory under ``C`` is what the user allowed: ``main = C``, ``critical =
  C x`` (the settings' critical / main), never above the effective limit; so a job that keeps its
  1,500 MB budget raises no CRITICAL alert and reads as healthy, while the container binds still.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional

from ..config import GuardConfig
from ..errors import ConfigError
from ..memory.limits import EFFECTIVE_LIMIT_SHARE, EffectiveLimit
from ..units import AUTO

MB = 1024 * 1024
logger = logging.getLogger("zerorag_guard")
#: ``main`` is the steady memory plus this share of the room between it and ``critical``.
ROOM_SHARE = 0.75
#: The steady memory is derived again once it moved by this share.
STEADY_MOVE = 0.10


@dataclass(frozen=True)
class Thresholds:
    """The three marks in bytes, where they come from (``settings``, ``auto`` or ``budget``),
    a reason for each (``why``), and ``problem``: a conflict of the settings with this machine,
    as the :class:`~zerorag_guard.ConfigError` that setting them now raises (None if none)."""

    preventive: int
    main: int
    critical: int
    source: str
    why: dict[str, str]
    problem: Optional[ConfigError] = None

    def entries(self) -> tuple[int, int, int]:
        return self.preventive, self.main, self.critical

    def to_dict(self) -> dict[str, Any]:
        return {
            "preventive_threshold_mb": round(self.preventive / MB, 1),
            "threshold_mb": round(self.main / MB, 1),
            "critical_threshold_mb": round(self.critical / MB, 1),
            "source": self.source,
            "why": dict(self.why),
            "problem": None if self.problem is None else str(self.problem),
        }


def derive(
    config: GuardConfig,
    limit: EffectiveLimit,
    steady: int,
    budget_ceiling: Optional[int] = None,
) -> Thresholds:
    """The thresholds for ``config`` on a machine of ``limit`` with ``steady`` bytes of steady
    memory, widened by the largest active ``budget_ceiling`` the user set."""
    main_auto, critical_auto = config.threshold_mb == AUTO, config.critical_threshold_mb == AUTO
    cap = int(EFFECTIVE_LIMIT_SHARE * limit.bytes)
    where = f"{limit.bytes / MB:,.0f} MB, {limit.source}"
    why: dict[str, str] = {}
    problem: Optional[ConfigError] = None
    if critical_auto:
        critical = cap
        why["critical"] = f"auto: 90% of the effective limit ({where})"
    else:
        critical = int(float(config.critical_threshold_mb) * MB)
        why["critical"] = "MEMORY_CRITICAL_THRESHOLD_MB"
    if main_auto:
        if steady < critical:
            main = steady + int(ROOM_SHARE * (critical - steady))
            why["main"] = f"auto: steady memory {steady / MB:,.0f} MB + 3/4 of the room to critical"
        else:
            main = int(critical / 1.2)
            why["main"] = "auto: steady memory is at critical; main at critical / 1.2"
            problem = ConfigError(
                "MEMORY_CRITICAL_THRESHOLD_MB",
                config.critical_threshold_mb,
                f"a size above the process's steady memory ({steady / MB:,.0f} MB), so that "
                "MEMORY_THRESHOLD_MB=auto fits between them",
            )
    else:
        main = int(float(config.threshold_mb) * MB)
        why["main"] = "MEMORY_THRESHOLD_MB"
        if critical_auto and main >= critical:
            problem = ConfigError(
                "MEMORY_THRESHOLD_MB",
                config.threshold_mb,
                "a size below the automatic critical threshold, 90% of the effective limit "
                f"({critical / MB:,.0f} MB of {where})",
            )
            critical = int(main * 1.2)
            why["critical"] = "auto: above MEMORY_THRESHOLD_MB (90% of the limit is below it)"
    source = "auto" if main_auto or critical_auto else "settings"
    if budget_ceiling is not None and budget_ceiling > main:
        ratio = critical / main
        main = budget_ceiling
        critical = max(main + 1, min(int(main * ratio), limit.bytes))
        why["main"] = f"a budget allows {main / MB:,.0f} MB"
        why["critical"] = "the budget's ceiling x the settings' critical/main, within the limit"
        source = "budget"
    preventive = int(main * config.preventive_ratio)
    why["preventive"] = f"{config.preventive_ratio:g} x main"
    return Thresholds(preventive, main, critical, source, why, problem)


def steady_memory(rss: list[float]) -> int:
    """The process's steady memory from recent RSS readings (bytes): the 10th percentile, the
    level it returns to between batches; spikes above it are batches, not baseline."""
    if not rss:
        return 0
    ordered = sorted(rss)
    return int(ordered[len(ordered) // 10])


class ThresholdKeeper:
    """The thresholds a monitor applies, kept current: derived again when the settings, the
    effective limit, the steady memory (``auto`` only) or the budgets allowing more change.

    ``base`` is what the settings give on this machine (a budget with no limit of its own takes
    its ceiling from it); ``current`` adds the widest active budget; ``marks`` are ``current``'s
    entry marks and release marks (entry x (1 - ``hysteresis_ratio``)).
    """

    def __init__(
        self, config: GuardConfig, limit: EffectiveLimit, steady: int, strict: bool = True
    ) -> None:
        self._lock = threading.Lock()
        self._allowed: dict[int, int] = {}
        self._tokens = itertools.count(1)
        self._limit = limit
        self._steady = steady
        self._config = config
        self.base = self.current = derive(config, limit, steady)
        self.marks: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        self._widened: Optional[int] = None  # the ceiling ``current`` was widened to, if any
        # (thresholds, marks) by widening ceiling (None: the base), cleared when the base moves.
        self._derived: dict[Optional[int], tuple[Thresholds, Any]] = {}
        self.update(config, strict=strict)

    def update(
        self,
        config: Optional[GuardConfig] = None,
        limit: Optional[EffectiveLimit] = None,
        steady: Optional[int] = None,
        strict: bool = False,
    ) -> None:
        """Derive again; ``strict`` raises the settings' conflict with the machine (a
        :class:`~zerorag_guard.ConfigError`) instead of reporting it, and changes nothing."""
        config = config or self._config
        limit = limit or self._limit
        steady = self._steady if steady is None else steady
        base = derive(config, limit, steady)
        if strict and base.problem is not None:
            raise base.problem
        with self._lock:
            self._config, self._limit, self._steady, self.base = config, limit, steady, base
            self._apply(changed=True)

    def _apply(self, changed: bool = False) -> None:
        """``current`` and ``marks`` for the widest allowance; derived only when that ceiling
        (or, ``changed``, the base) moved: guarded calls with a limit allow and disallow on
        every call, and most of them change nothing."""
        widest = max(self._allowed.values(), default=None)
        if widest is not None and widest <= self.base.main:
            widest = None  # a budget below the thresholds widens nothing
        if changed:
            self._derived.clear()
        elif widest == self._widened:
            return
        known = self._derived.get(widest)
        if known is None:
            current = self.base
            if widest is not None:
                current = derive(self._config, self._limit, self._steady, widest)
            entry = current.entries()
            release = tuple(int(m * (1.0 - self._config.hysteresis_ratio)) for m in entry)
            if len(self._derived) >= 64:  # many different ceilings: keep it bounded
                self._derived.clear()
            known = self._derived[widest] = (current, (entry, release))
        (self.current, self.marks), self._widened = known, widest

    def moved(self, limit: EffectiveLimit, steady: int) -> bool:
        """Whether the thresholds are to be derived again: the limit changed (it caps a budget's
        widening, and ``auto`` follows it), or the steady memory moved by more than
        :data:`STEADY_MOVE` (``auto`` only)."""
        if limit.bytes != self._limit.bytes:
            return True
        return self._config.auto_thresholds and abs(steady - self._steady) > STEADY_MOVE * max(
            self._steady, 1
        )

    def follow(self, limit: EffectiveLimit, steady: int) -> None:
        """Derive again when the limit changed or, for ``auto``, the steady memory moved (the
        monitor looks every few seconds), and log what ``auto`` derived."""
        if not self.moved(limit, steady):
            return
        self.update(limit=limit, steady=steady)
        if self._config.auto_thresholds:
            t = self.base
            logger.info(
                "auto thresholds derived again: %.0f / %.0f MB (%s; %s)",
                t.main / MB,
                t.critical / MB,
                t.why["main"],
                t.why["critical"],
            )

    def allow(self, ceiling: int) -> int:
        """A budget the user set allows memory up to ``ceiling``; returns the token that ends it."""
        with self._lock:
            token = next(self._tokens)
            self._allowed[token] = ceiling
            if ceiling > (self._widened or self.base.main):  # else the widest is unchanged
                self._apply()
            return token

    def disallow(self, token: int) -> None:
        with self._lock:
            ended = self._allowed.pop(token, None)
            if ended is not None and ended == self._widened:
                self._apply()  # the widest one ended
