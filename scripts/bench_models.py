"""Training throughput of every registered architecture on this CPU, as a Markdown table.

    .venv/bin/python scripts/bench_models.py                       # all architectures, ~1 min
    .venv/bin/python scripts/bench_models.py --arch cnn_small --accuracy 8

For numbers comparable with training runs, export the Makefile's MALLOC_* variables first.

Throughput: fp32, SGD with momentum, batch 128 of random images, median seconds per step
(forward + backward + update) after warm-up steps; steps spike 2-3x on a busy machine, hence the
median. ``--accuracy EPOCHS`` also trains each architecture on Fashion-MNIST with the project's
trainer and reports test accuracy (needs the dataset, see README "Data").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from modelprove.models import ARCHITECTURES, build_model

SHAPES = ((1, 28, 28), (3, 32, 32))
# ResNet-18 runs at tens of images per second on 2 cores: a few steps give its order of magnitude.
SLOW = {"resnet18": 3}


def step_seconds(arch: str, shape: tuple[int, int, int], batch: int, steps: int, warmup: int) -> float:
    channels, height, width = shape
    torch.manual_seed(0)
    model = build_model(arch, channels, 10, (height, width)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def fashion_mnist_accuracy(arch: str, epochs: int) -> float:
    from modelprove.data import load_dataset
    from modelprove.training import TrainConfig, evaluate, train

    train_data, test_data = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    model = build_model(arch, 1, train_data.num_classes, (28, 28))
    train(model, train_data, TrainConfig(epochs=epochs, seed=0), description=f"{arch} on Fashion-MNIST")
    return evaluate(model, test_data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(ARCHITECTURES), help="repeatable; default all")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per architecture and shape")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accuracy", type=int, default=0, metavar="EPOCHS",
                        help="also train on Fashion-MNIST for EPOCHS epochs and report test accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    archs = args.arch or list(ARCHITECTURES)
    header = ["arch", "params (1x28x28, 10 classes)", *(f"train img/s {c}x{h}x{w}" for c, h, w in SHAPES)]
    if args.accuracy:
        header.append(f"Fashion-MNIST test acc, {args.accuracy} ep")
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, fp32, "
          f"load average {load:.2f} at start\n")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for arch in archs:
        params = sum(p.numel() for p in build_model(arch, 1, 10, (28, 28)).parameters())
        steps = min(args.steps, SLOW.get(arch, args.steps))
        warmup = min(args.warmup, 1) if arch in SLOW else args.warmup
        row = [arch, f"{params:,}"]
        for shape in SHAPES:
            seconds = step_seconds(arch, shape, args.batch, steps, warmup)
            row.append(f"{args.batch / seconds:,.0f}" + (f" ({steps} steps)" if arch in SLOW else ""))
        if args.accuracy:
            row.append(f"{fashion_mnist_accuracy(arch, args.accuracy):.4f}")
        print("| " + " | ".join(row) + " |", flush=True)
    # Another busy process on the 2 cores slowed 2-thread steps ~10x in our runs: check the load.
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
