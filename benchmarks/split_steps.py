"""Forward passes per decode step from sequence-id gaps, on the engine's own pool (no model).

With split KV streams llama.cpp runs only consecutive ascending sequence ids in one forward pass, so
a decode step over ids {0, 1, 4, 5} costs two. This replays random traffic through SequencePool
(requests of K = 1..3 branches, 5..64 steps each, `--requests` in flight, no prompt cache) and
reports the mean number of runs of consecutive ids per step:

    python benchmarks/split_steps.py [--requests 8] [--steps 3000] [--seeds 5]
"""

import argparse
import random

from la_edge.runtime.pool import SequencePool


def runs(ids) -> int:
    """Runs of consecutive ids: the forward passes one decode step over them takes."""
    ids = sorted(ids)
    return (1 + sum(b != a + 1 for a, b in zip(ids, ids[1:]))) if ids else 0


def simulate(seed: int, requests: int, max_branches: int, steps: int) -> float:
    rnd = random.Random(seed)
    pool = SequencePool(requests * max_branches, 0)
    active = []  # [seq ids, steps left]
    total = 0
    for _ in range(steps):
        while len(active) < requests:
            k = rnd.choice([1, 2, 3])
            active.append([list(pool.place([[1, 2, 3]] * k, 0, 4).seq_ids), rnd.randint(5, 64)])
        total += runs(i for a in active for i in a[0])
        for a in active:
            a[1] -= 1
        for a in [a for a in active if a[1] <= 0]:
            pool.release(a[0], [], 0)
            pool.take_changes()
            active.remove(a)
    return total / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-branches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    mean = sum(simulate(s, args.requests, args.max_branches, args.steps) for s in range(args.seeds)) / args.seeds
    print(f"{args.requests} requests of K = 1..3 in flight: {mean:.2f} forward passes per decode step on average")


if __name__ == "__main__":
    main()
