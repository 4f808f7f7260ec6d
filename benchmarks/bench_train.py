"""Training throughput of the target recipe, measured side by side in one run.

Prints seconds per epoch of LeNet-5 on the mnist5k owner_train pool for the plain loop and for
the +-2 px shift augmentation the target preset uses, interleaved over several rounds, and their
ratio. Run: ``.venv/bin/python benchmarks/bench_train.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from misentry.data import get_dataset
from misentry.models import TrainConfig, build_model, fit, input_spec


def seconds_per_epoch(config: TrainConfig, data: object) -> float:
    model = build_model("lenet5", input_spec("mnist5k"), seed=0)
    started = time.perf_counter()
    fit(model, data, config)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / config.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = get_dataset("mnist5k").pools(0)["owner_train"]
    configs = {
        "plain": TrainConfig(epochs=args.epochs),
        "shift2": TrainConfig(epochs=args.epochs, augment_shift=2),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, config in configs.items():
            times[name].append(seconds_per_epoch(config, data))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:>7}: {value:.3f} s/epoch (median of {args.rounds})")
    print(f"shift2 / plain: {medians['shift2'] / medians['plain']:.2f}x")


if __name__ == "__main__":
    main()
