"""Detection table of one fingerprint bundle against built BIVBench instances.

For each instance, d = how many of the bundle's N fingerprints it labels differently from the
target; the table gives, per variant, the mean over instances of the exact expected detection
rate 1 - C(N - d, N_S) / C(N, N_S) with a 95 % interval (misentry.bench.metrics). The identity
control is printed in its own row: it must be 0.

Either evaluate an existing bundle, or generate one first with a registered method:

    .venv/bin/python benchmarks/detection.py --instances runs/bench --bundle runs/fp
    .venv/bin/python benchmarks/detection.py --instances runs/bench --target runs/target \\
        --method natural --n 100
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from misentry.bench.metrics import detection_rate, disagreements
from misentry.data import get_dataset
from misentry.fingerprint.bundle import FingerprintSet, load_bundle, load_key
from misentry.fingerprint.registry import get_method
from misentry.models import load_model


def fingerprints(args: argparse.Namespace) -> FingerprintSet:
    if args.bundle is not None:
        return load_bundle(args.bundle, load_key(args.key_file))
    target, record = load_model(args.target)
    pools = get_dataset(record.dataset).pools(record.data_seed)
    return get_method(args.method).generate(
        target, pools["source"], args.n, args.seed, normal=pools["test"].x
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=Path, required=True, help="tamper build output")
    parser.add_argument("--bundle", type=Path, help="a fingerprint bundle folder")
    parser.add_argument("--key-file", type=Path, help="key of a signed bundle")
    parser.add_argument("--target", type=Path, help="target record (to generate a bundle)")
    parser.add_argument("--method", default="natural", help="method to generate with")
    parser.add_argument("--n", type=int, default=100, help="fingerprints to generate")
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 5], help="N_S values")
    args = parser.parse_args()
    if (args.bundle is None) == (args.target is None):
        parser.error("give either --bundle or --target")
    torch.set_num_threads(2)
    fps = fingerprints(args)
    x, expected, n = fps.x, fps.labels, len(fps)
    d_by_variant: dict[str, list[int]] = defaultdict(list)
    for meta in sorted(args.instances.glob("*/*/meta.json")):
        model, record = load_model(meta.parent)
        if record.metrics.get("observable") is False and record.params["variant"] != "identity":
            continue  # the benchmark holds observable instances only
        d_by_variant[record.params["variant"]].append(disagreements(model, x, expected))
    method = fps.manifest.get("method", "?")
    header = " | ".join(f"DR@{ns} (95% CI)" for ns in args.ns)
    print(f"method {method}, N = {n}\n| variant | instances | {header} |")
    print("|---|---|" + "---|" * len(args.ns))
    rows = sorted(d_by_variant, key=lambda v: (v == "identity", v))
    for variant in rows:
        cells = []
        for ns in args.ns:
            rate = detection_rate(d_by_variant[variant], n, ns)
            cells.append(f"{rate.mean:.3f} ({rate.low:.3f}-{rate.high:.3f})")
        print(f"| {variant} | {len(d_by_variant[variant])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
