"""Why the benchmark runs in 1-thread worker processes: time the grid's typical builds alone and as a pair.

    python scripts/worker_speed.py            # one process, then two side by side (about 6 min)

Each process trains the benchmark's cnn_small victim (5 epochs, 10,000 Fashion-MNIST images), then
steals it with zero-shot (100 iterations) and distillation (5 epochs), on one torch thread. If a pair
takes about as long per process as one alone, two workers double the throughput of the grid.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def one(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from modelprove.attacks import run_attack
    from modelprove.bench.config import DataSpec
    from modelprove.bench.runner import bench_splits, train_plain_model
    from modelprove.training import TrainConfig

    splits = bench_splits(DataSpec(dataset="fashion-mnist", defender_limit=10000, attacker_limit=10000, test_limit=2000))
    start = time.perf_counter()
    victim, _ = train_plain_model("cnn_small", splits.defender, splits.test, TrainConfig(epochs=5, seed=0), "victim")
    print(f"train cnn_small, 5 epochs: {time.perf_counter() - start:.1f} s", flush=True)
    for attack in ("zero_shot:iterations=100", "distill:epochs=5"):
        start = time.perf_counter()
        run_attack(attack, victim, splits.attacker, seed=0)
        print(f"{attack}: {time.perf_counter() - start:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", action="store_true", help="run one process's timings (used by the pair run)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.one:
        one(args.threads)
        return
    command = [sys.executable, __file__, "--one", "--threads", str(args.threads)]
    print("alone:", flush=True)
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    print("two side by side:", flush=True)
    pair = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    for i, process in enumerate(pair):
        out, _ = process.communicate()
        print("".join(f"  process {i + 1}: {line}\n" for line in out.splitlines()), end="")


if __name__ == "__main__":
    main()
