"""How the batch sizer keeps the ceiling on noisy workloads outside the suite's own draws.

``tests/budget/test_sizing.py`` runs 150 derandomized workloads; this runs thousands more of
the same model (its ``Workload`` and ``drive``: a fixed cost, a cost per item, +-30% noise on
every batch, a warm-up, a ratchet, memory the allocator keeps; 100 batches each), drawn
uniformly and with a bias to the bounds of each figure, and prints for each draw: the batches
over the ceiling (in how many workloads, the worst as a share of the room, how many in the
first 10 batches) and the workloads whose batches stayed under 80% of what fits. The figures
of ``docs/budget.md`` come from ``python tools/sizer_noise.py --seeds 2 3`` (about a minute per
seed).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "budget")]  # this checkout's package and test
from test_sizing import NOISY_BATCHES, Workload, drive  # noqa: E402


def draw(rng: random.Random, biased: bool) -> Workload:
    """One workload in the ranges of the test's strategy; ``biased``: each figure is at or near
    a bound of its range about a third of the time."""

    def figure(low: float, high: float) -> float:
        if biased and rng.random() < 0.35:
            near = (high - low) * rng.random() * 0.05
            return rng.choice([low, high, low + near, high - near])
        return rng.uniform(low, high)

    return Workload(
        start=figure(50, 600),
        fixed=figure(0, 150),
        item=figure(0.05, 10),
        warmup=figure(0, 100),
        ratchet=figure(0, 1),
        keep=figure(0, 1),
        target=rng.choice([64, 256, 1000, 5000]),
    )


def run(workloads: int, seed: int, biased: bool) -> str:
    rng = random.Random(seed)
    count = 0
    over: list[tuple[int, int, float]] = []  # (workload, batch, excess / room)
    short: list[tuple[float, Workload]] = []
    while count < workloads:
        w = draw(rng, biased)
        if not w.holds_a_noisy_run():  # the test's own assumptions
            continue
        noisy = random.Random(rng.getrandbits(32))
        noise = [noisy.uniform(0.7, 1.3) for _ in range(NOISY_BATCHES)]
        kept = [noisy.uniform(0, 1) for _ in range(NOISY_BATCHES)]
        batches = drive(w, NOISY_BATCHES, noise.__getitem__, kept.__getitem__)
        count += 1
        for i, b in enumerate(batches):
            if b.peak > w.limit:
                room = w.limit - (w.start + i * w.ratchet)
                over.append((count, i, (b.peak - w.limit) / room))
        reach = max(b.size / min(w.target, b.fits) for b in batches[NOISY_BATCHES // 3 :])
        if reach < 0.8:
            short.append((reach, w))
    return (
        f"{'biased' if biased else 'uniform'} seed {seed}: {workloads} workloads: "
        f"{len(over)} batches over the ceiling in {len({o[0] for o in over})} workloads"
        f" (worst by {max((o[2] for o in over), default=0):.0%} of the room,"
        f" {sum(o[1] < 10 for o in over)} in the first 10 batches);"
        f" {len(short)} under 80% of what fits (lowest {min((r for r, _ in short), default=1):.0%};"
        f" {sum(w.fixed >= 130 and w.start >= 500 for _, w in short)} of them with a fixed cost"
        " of 130 MB or more over 500 MB or more in use)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=6000, help="per seed and draw")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    for seed in args.seeds:
        for biased in (False, True):
            print(run(args.workloads, seed, biased), flush=True)


if __name__ == "__main__":
    main()
