"""Finding a write's per-item arguments and cutting them in step.

A guarded write is only safe to chunk when every argument that carries one value per item is
cut with the items. Those arguments arrive by name (``add_texts(texts, metadatas, ids)``),
through ``**kwargs`` (LangChain's ``VectorStore.add_documents(documents, **kwargs)`` takes
``ids`` that way), or inside a structure (qdrant's ``models.Batch``). :func:`plan_write` finds
them all, wherever they sit; when a call carries a list-like argument of the items' length that
the guard does not know, it does not guess: the plan is None, the call goes through whole, and
:class:`UnplacedArgumentWarning` says so once. Nothing here imports a store.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

#: Turns one chunk's field values into the call's arguments (qdrant: back into a ``Batch``).
Adapt = Callable[[dict[str, Any]], dict[str, Any]]

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class UnplacedArgumentWarning(UserWarning):
    """A guarded write went through whole, unchunked: one of its arguments looks per-item (a
    list-like of the items' length) but the guard does not know it, so cutting the items
    without it could pair an item with another item's value."""


@dataclass
class Plan:
    """How one call is cut: ``items`` to hand to the budget's ``chunks()``, ``part_of(batch)``
    the field values of a chunk, ``count`` the number of items (None for a stream)."""

    items: Iterable[Any]
    part_of: Callable[[list[Any]], dict[str, Any]]
    count: Optional[int]
    adapt: Adapt


def same(part: dict[str, Any]) -> dict[str, Any]:
    return part


# -- where the arguments sit ----------------------------------------------------------------------
def _var_keyword(signature: inspect.Signature) -> Optional[str]:
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return parameter.name
    return None


def call_arguments(bound: inspect.BoundArguments) -> dict[str, Any]:
    """Every keyword-addressable argument of a bound call by name, ``**kwargs`` spread out."""
    spread: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            spread.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            spread[name] = value
    return spread


def rebuild(bound: inspect.BoundArguments, part: dict[str, Any]) -> tuple[Any, Any]:
    """The call's ``(args, kwargs)`` with the chunk's values in place of the whole ones, each
    where it came from: its own parameter, or the ``**kwargs``."""
    parameters = bound.signature.parameters
    extra = _var_keyword(bound.signature)
    for name, value in part.items():
        if name in parameters and parameters[name].kind not in _VARIADIC:
            bound.arguments[name] = value
        else:
            assert extra is not None  # the value came from the **kwargs
            bound.arguments[extra][name] = value
    return bound.args, bound.kwargs


# -- what can be cut ------------------------------------------------------------------------------
def _list_like(value: Any) -> bool:
    """A list, a tuple or an array: a candidate for one value per item."""
    if isinstance(value, (str, bytes, bytearray, Mapping)):
        return False
    return isinstance(value, Sequence) or hasattr(value, "__array__")


def _sized(value: Any) -> bool:
    return not isinstance(value, (str, bytes, bytearray)) and (
        hasattr(value, "__len__") and hasattr(value, "__getitem__")
    )


def _columns(value: Mapping[Any, Any]) -> Optional[int]:
    """The common length of a mapping of columns (qdrant's named vectors), else None."""
    lengths = {len(v) if _sized(v) and not isinstance(v, Mapping) else -1 for v in value.values()}
    return lengths.pop() if len(lengths) == 1 and -1 not in lengths else None


def _length(value: Any) -> Optional[int]:
    """Items in a field, None for a stream; -1 for a value that is no sequence of items."""
    if isinstance(value, Mapping):
        columns = _columns(value)
        return -1 if columns is None else columns
    if _sized(value):
        return len(value)
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        return -1
    return None


def _slice(value: Any, start: int, stop: int) -> Any:
    if isinstance(value, Mapping):
        return {k: v[start:stop] for k, v in value.items()}
    return value[start:stop]  # a view for numpy arrays


# -- the plan -------------------------------------------------------------------------------------
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(what: str, argument: str, why: str) -> None:
    with _warned_lock:
        if (what, argument) in _warned:
            return
        _warned.add((what, argument))
    warnings.warn(
        f"{what}: written whole, not in chunks: {why}", UnplacedArgumentWarning, stacklevel=4
    )


def _stray(arguments: dict[str, Any], known: Collection[str], count: Optional[int]) -> Any:
    for name, value in arguments.items():
        if name in known or not _list_like(value):
            continue
        if count is None or _length(value) == count:
            return name
    return None


def plan_write(
    arguments: dict[str, Any],
    fields: dict[str, Any],
    known: Collection[str],
    what: str,
    adapt: Adapt = same,
) -> Optional[Plan]:
    """How to cut a call, given its :func:`call_arguments` and the per-item ``fields`` found in
    them (the items first); None to send it whole.

    ``known`` are the arguments the guard can place: the per-item ones and those known to be
    whole. Sent whole: a call of no item or one (nothing to cut, so the bare call's own result);
    and, with :class:`UnplacedArgumentWarning`, a field that is no sequence of items (a single
    mapping where a list of them was expected) or another list-like argument as long as the
    items (any list-like one when the items are a stream). ``ValueError`` when the fields
    disagree in length, before anything is written.
    """
    names = list(fields)
    lengths = {n: _length(fields[n]) for n in names}
    first = lengths[names[0]]
    if first is not None and first <= 1:
        return None  # one item or none (or the items are no sequence): the store decides
    odd = next((n for n in names if lengths[n] == -1), None)
    if odd is not None:
        _warn_once(what, odd, f"argument {odd!r} is not a sequence of one value per item")
        return None
    sized = {k for k in lengths.values() if k is not None}
    if len(sized) > 1:
        raise ValueError(
            f"{what}: the arguments written together must have the same length, got "
            + ", ".join(f"{n}={k}" for n, k in lengths.items())
        )
    count = first if None not in lengths.values() else None
    stray = _stray(arguments, known, count)
    if stray is not None:
        why = (
            f"argument {stray!r} holds {count} values, one per item perhaps, and the guard does "
            "not know it"
            if count is not None
            else f"the items are a stream and the guard does not know list-like argument {stray!r}"
        )
        _warn_once(what, stray, why)
        return None
    values = [fields[n] for n in names]
    if count is not None:

        def by_range(batch: list[int]) -> dict[str, Any]:
            start, stop = batch[0], batch[-1] + 1
            return {n: _slice(v, start, stop) for n, v in zip(names, values)}

        return Plan(range(count), by_range, count, adapt)

    def by_column(batch: list[tuple[Any, ...]]) -> dict[str, Any]:
        return {n: list(column) for n, column in zip(names, zip(*batch))}

    return Plan(zip(*values, strict=True), by_column, None, adapt)


def combine(results: list[Any]) -> Any:
    """List results (ids) concatenated in order, else the last chunk's result (None stays None)."""
    if results and all(isinstance(r, list) for r in results):
        return list(itertools.chain.from_iterable(results))
    return results[-1] if results else None
