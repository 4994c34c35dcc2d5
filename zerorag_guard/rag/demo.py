"""The demo job: ingest the Python standard library's own source into a vector store under a budget.

Every machine with Python has the corpus: the ``*.py`` files of ``sysconfig``'s ``stdlib`` path
(test directories and site-packages left out), top-level modules first. Each file is split into
passages of about :data:`PASSAGE_CHARS` characters, which are embedded and upserted by
:class:`~zerorag_guard.rag.vector_store.VectorStoreService` in adaptive batches under the budget,
or, for the comparison, in batches of a fixed size with no guard. The passages are streamed: the
corpus is never in memory whole. The output is a plain dict (:func:`run`); the command
``zerorag-guard demo`` prints it (:mod:`zerorag_guard.cli.demo`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sysconfig
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from ..memory.probes import MB
from ..monitor.process import get_monitor
from .embedders import make_embedder
from .vector_store import VectorStoreService

#: Default budget (MB of RSS). Measured here (2 cores, Python 3.11, chromadb 1.5, the whole
#: stdlib, ~13,700 passages): the process starts at ~100 MB; the guarded run peaks at ~253 MB;
#: batches of a fixed 5,000 passages peak at 301-313 MB (about 23 KB a passage in flight).
DEFAULT_BUDGET_MB = 280.0
#: The largest batch of the guarded run and the batch of the fixed run: the same, so the only
#: difference between the two is the guard.
DEFAULT_BATCH_SIZE = 5000
FIXED_BATCH_SIZE = 5000
PASSAGE_CHARS = 1000
SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
)
#: The sample search asks for the first paragraph of this module's docstring.
SAMPLE_MODULE = "heapq"

Progress = Callable[[dict[str, Any]], None]


def stdlib_files(limit: Optional[int] = None, root: Optional[str] = None) -> list[Path]:
    """The standard library's source files, top-level modules first, then by path."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("test"))
        found.extend(Path(folder, f) for f in files if f.endswith(".py"))
    found.sort(key=lambda p: (len(p.relative_to(base).parts), str(p.relative_to(base))))
    return found[:limit] if limit else found


def module_name(path: Path, root: Path) -> str:
    """``json.decoder`` for ``json/decoder.py``, ``json`` for ``json/__init__.py``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def split_passages(text: str, size: int = PASSAGE_CHARS) -> list[str]:
    """Paragraphs (blank-line blocks) packed into passages of about ``size`` characters; a
    block longer than twice that is cut on line boundaries."""
    passages: list[str] = []
    current: list[str] = []
    length = 0
    for block in re.split(r"\n\s*\n", text):
        if not block.strip():
            continue
        pieces = [block]
        while len(pieces[-1]) > 2 * size:
            last = pieces.pop()
            cut = last.rfind("\n", 0, size)
            cut = size if cut <= 0 else cut
            pieces += [last[:cut], last[cut:].lstrip("\n")]
        for piece in pieces:
            if current and length + len(piece) > size:
                passages.append("\n\n".join(current))
                current, length = [], 0
            current.append(piece)
            length += len(piece)
    if current:
        passages.append("\n\n".join(current))
    return passages


class Corpus:
    """Streams ``(text, metadata, id)`` passages of ``files``; counts documents and passages."""

    def __init__(self, files: Sequence[Path], root: Optional[str] = None) -> None:
        self.files = list(files)
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        self.documents = 0
        self.passages = 0

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any], str]]:
        for path in self.files:
            text = path.read_text(encoding="utf-8", errors="replace")
            module = module_name(path, self.root)
            for n, passage in enumerate(split_passages(text)):
                self.passages += 1
                meta = {"module": module, "path": str(path.relative_to(self.root)), "passage": n}
                yield passage, meta, f"{module}:{n}"
            self.documents += 1


class Timeline:
    """RSS sampled every ``interval`` seconds on a daemon thread: ``(seconds, MB)`` pairs."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-timeline", daemon=True)
        self._start = time.perf_counter()
        self._read = get_monitor().probe.rss_bytes

    def mark(self) -> None:
        """Take a reading now (after each batch: the store's writes can hold the GIL for
        seconds, starving the sampler thread)."""
        self.points.append((time.perf_counter() - self._start, self._read() / MB))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.mark()
            self._stop.wait(self.interval)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.mark()
        self.points.sort()


def sample_query(module: str = SAMPLE_MODULE, chars: int = 200) -> str:
    """The opening paragraphs (about ``chars`` characters) of ``module``'s docstring, read from
    its source file (the module is not imported)."""
    path = Path(sysconfig.get_paths()["stdlib"], *module.split(".")).with_suffix(".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    match = re.search(r'"""(.*?)"""', path.read_text(encoding="utf-8"), re.S)
    if not match:
        return module
    words: list[str] = []
    for paragraph in re.split(r"\n\s*\n", match.group(1)):
        words += paragraph.split()
        if len(" ".join(words)) >= chars:
            break
    return " ".join(words)


def run(
    *,
    store: str = "chroma",
    limit: Optional[int] = None,
    budget_mb: float = DEFAULT_BUDGET_MB,
    out: str = "zerorag_guard_demo",
    batch_size: int = DEFAULT_BATCH_SIZE,
    fixed: Optional[int] = None,
    embedder: str = "hashing",
    search: bool = True,
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """Run the ingestion once; returns what the summary shows (see the module docstring).

    ``fixed`` runs the unguarded baseline with batches of that many passages. The store lives
    in ``out/store-<store>[-fixed]``, emptied first so every run starts from nothing.
    """
    monitor = get_monitor().start()
    files = stdlib_files(limit)
    corpus = Corpus(files)
    where = os.path.join(out, f"store-{store}" + ("-fixed" if fixed else ""))
    shutil.rmtree(where, ignore_errors=True)
    service = VectorStoreService(
        where,
        backend=store,
        embedder=make_embedder(embedder),
        limit_mb=budget_mb,
        batch_size=batch_size,
    )
    start_rss = monitor.rss_mb()
    sizes: list[int] = []
    timeline = Timeline()

    def report(count: int, rss_mb: float) -> None:
        sizes.append(count)
        timeline.mark()
        if progress is not None:
            progress(
                {
                    "documents": corpus.documents,
                    "total_documents": len(files),
                    "passages": corpus.passages,
                    "batch": count,
                    "rss_mb": rss_mb,
                    "budget_mb": budget_mb,
                }
            )

    started = time.perf_counter()
    with timeline:
        if fixed:
            ingest_fixed(service, corpus, fixed, report)
        else:
            rows = itertools.tee(corpus, 3)
            service.add_documents(
                (r[0] for r in rows[0]),
                (r[1] for r in rows[1]),
                (r[2] for r in rows[2]),
                progress=lambda n, b: report(n, monitor.rss_mb()),
            )
    seconds = time.perf_counter() - started
    peak_mb = monitor.probe.lifetime_peak() / MB
    budget = service.last_budget
    result: dict[str, Any] = {
        "mode": f"fixed batch {fixed}" if fixed else "guarded",
        "store": store,
        "embedder": service.embedder.name,
        "documents": corpus.documents,
        "passages": corpus.passages,
        "stored": service.count(),
        "batches": len(sizes),
        "batch_size_min": min(sizes) if sizes else None,
        "batch_size_max": max(sizes) if sizes else None,
        "budget_mb": budget_mb,
        "start_rss_mb": round(start_rss, 1),
        "peak_mb": round(peak_mb, 1),
        "under_budget": peak_mb <= budget_mb,
        "cleanups": budget.stats()["cleanups"] if budget is not None else {},
        "seconds": round(seconds, 2),
        "passages_per_second": round(corpus.passages / seconds, 1) if seconds else None,
        "timeline": [(round(t, 3), round(m, 1)) for t, m in timeline.points],
        "store_path": service.path,
    }
    if search:
        result["search"] = sample_search(service)
        result["health"] = service.get_health_status()
    return result


def ingest_fixed(
    service: VectorStoreService, corpus: Corpus, size: int, report: Callable[[int, float], None]
) -> None:
    """The baseline: batches of exactly ``size`` passages (the last one smaller), no budget."""
    monitor = get_monitor()
    rows = iter(corpus)
    while batch := list(itertools.islice(rows, size)):
        texts = [r[0] for r in batch]
        vectors = service.embedder.embed_documents(texts)
        service.store.upsert([r[2] for r in batch], vectors, texts, [r[1] for r in batch])
        del vectors
        report(len(batch), monitor.rss_mb())


def sample_search(service: VectorStoreService, module: str = SAMPLE_MODULE) -> dict[str, Any]:
    """Search for the first paragraph of ``module``'s docstring; found if a top hit is from it."""
    query = sample_query(module)
    hits = service.search(query, k=3)
    return {
        "query": query,
        "expected_module": module,
        "found": any(h["metadata"].get("module") == module for h in hits),
        "hits": [
            {
                "module": h["metadata"].get("module"),
                "id": h["id"],
                "score": round(h["score"], 3),
                "text": h["text"][:160],
            }
            for h in hits
        ],
    }


def write_timeline(path: str, runs: Sequence[dict[str, Any]], budget_mb: float) -> str:
    """A PNG of RSS over time for each run, with the budget as a red line (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    try:
        top = budget_mb
        for run_result, color in zip(runs, ("tab:blue", "tab:orange")):
            points = run_result["timeline"]
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=color,
                linewidth=1.6,
                label=f"{run_result['mode']}: peak {run_result['peak_mb']:,.0f} MB",
            )
            top = max(top, run_result["peak_mb"])
        ax.axhline(budget_mb, color="red", linestyle="--", label=f"budget {budget_mb:,.0f} MB")
        ax.set_ylim(0, top * 1.1)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(f"zerorag-guard demo: {runs[0]['passages']:,} stdlib passages")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
