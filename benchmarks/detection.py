"""Detection table of fingerprint bundles against built BIVBench instances, methods side by side.

For each instance, d = how many of a bundle's N fingerprints it labels differently from the
target; each cell is the mean over a variant's instances of the exact expected detection rate
1 - C(N - d, N_S) / C(N, N_S) (misentry.bench.metrics). The identity control is printed in its
own row: it must be 0. Under the table: the generation cost per fingerprint.

Evaluate existing bundles, or generate them first with registered methods (one column each):

    .venv/bin/python benchmarks/detection.py --instances runs/bench --bundle runs/fp
    .venv/bin/python benchmarks/detection.py --instances runs/bench --target runs/target \\
        --method misentry --method misentry-covert --method natural --n 100

``--set METHOD:KEY=VALUE`` overrides one method's parameter (VALUE parsed as JSON when it can
be). ``--band covert`` holds every non-MiSentry method to the covert band (target entropy and
confidence inside the [10th, 90th] percentile band of the owner's val images of the same
label): the method runs on every source image and the first N fingerprints inside the band are
kept, so methods are compared at equal output covertness. ``--json FILE`` saves every d and
rate. Instances built with ``--namespace tune`` are validation instances: tune on those, report
on ``bench`` ones.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from misentry.bench.metrics import detection_rate, disagreements
from misentry.bench.results import ResultRow, write_results
from misentry.bench.rows import bundle_rows
from misentry.data import get_dataset
from misentry.fingerprint.base import SearchContext
from misentry.fingerprint.bundle import FingerprintSet, load_bundle, load_key, save_bundle
from misentry.fingerprint.methods.misentry import inside_bands, normal_bands
from misentry.fingerprint.registry import get_method
from misentry.models import load_model


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in items:
        method, _, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not eq or not key:
            raise SystemExit(f"--set {item!r}: expected METHOD:KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[method][key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def generate(args: argparse.Namespace, method: str, params: dict[str, Any]) -> FingerprintSet:
    target, record = load_model(args.target)
    pools = get_dataset(record.dataset).pools(record.data_seed)
    generator = get_method(method, **params)
    context = SearchContext(normal=pools["test"].x, pools=pools, record=record)
    sources = pools["source"]
    held = args.band == "covert" and not method.startswith("misentry")
    n = len(sources) if held else args.n
    fps = generator.generate(target, sources, n, args.seed, normal=pools["test"].x, context=context)
    if held:
        keep = inside_bands(target, fps.x, normal_bands(target, pools["val"].x))
        index = keep.nonzero().squeeze(1)[: args.n]
        samples = [fps.manifest["samples"][i] for i in index.tolist()]
        manifest = {**fps.manifest, "samples": samples, "band": "covert", "in_band": len(index)}
        fps = FingerprintSet(
            fps.images[index], fps.labels[index], fps.source_indices[index], manifest
        )
    return fps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=Path, required=True, help="tamper build output")
    parser.add_argument("--bundle", type=Path, action="append", default=[], help="a bundle")
    parser.add_argument("--key-file", type=Path, help="key of signed bundles")
    parser.add_argument("--target", type=Path, help="target record (to generate bundles)")
    parser.add_argument("--method", action="append", default=[], help="method to generate with")
    parser.add_argument("--set", action="append", default=[], help="METHOD:KEY=VALUE")
    parser.add_argument("--band", choices=("none", "covert"), default="none")
    parser.add_argument("--n", type=int, default=100, help="fingerprints per method")
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 5], help="N_S values")
    parser.add_argument("--save", type=Path, help="save generated bundles under this folder")
    parser.add_argument("--json", type=Path, help="write every d and rate to this file")
    parser.add_argument(
        "--results", type=Path, help="write results.json/.csv (N_S = 1..20) to this folder"
    )
    args = parser.parse_args()
    if args.method and args.target is None:
        parser.error("--method needs --target")
    if not args.method and not args.bundle:
        parser.error("give --bundle or --method")
    torch.set_num_threads(2)
    sets = parse_sets(args.set)
    bundles: dict[str, FingerprintSet] = {}
    for path in args.bundle:
        fps = load_bundle(path, load_key(args.key_file))
        bundles[f"{fps.manifest.get('method', '?')}@{path.name}"] = fps
    for method in args.method:
        started = time.perf_counter()
        fps = generate(args, method, sets.get(method, {}))
        print(
            f"generated {method}: {len(fps)} fingerprints in {time.perf_counter() - started:.1f} s"
        )
        if len(fps) == 0:
            print(f"left out {method}: none of its fingerprints lies inside the band")
            continue
        bundles[method] = fps
        if args.save is not None:
            save_bundle(fps, args.save / method)
    d: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in bundles}
    for meta in sorted(args.instances.glob("*/*/meta.json")):
        model, record = load_model(meta.parent)
        if record.metrics.get("observable") is False and record.params["variant"] != "identity":
            continue  # the benchmark holds observable instances only
        for name, fps in bundles.items():
            d[name][record.params["variant"]].append(disagreements(model, fps.x, fps.labels))
    report(args, bundles, d)
    if args.results is not None:
        rows = result_rows(args, bundles, d)
        paths = write_results(rows, args.results)
        print(f"wrote {len(rows)} rows to {paths[0]} and {paths[1]}")


def result_rows(
    args: argparse.Namespace,
    bundles: dict[str, FingerprintSet],
    d: dict[str, dict[str, list[int]]],
) -> list[ResultRow]:
    """Each bundle's rows (:func:`misentry.bench.rows.bundle_rows`): detection for N_S 1..20,
    cost and, with --target, covertness."""
    target = pools = None
    if args.target is not None:
        target, record = load_model(args.target)
        pools = get_dataset(record.dataset).pools(record.data_seed)
    rows: list[ResultRow] = []
    for name, fps in bundles.items():
        dataset = str(fps.manifest.get("dataset", "?"))
        rows += bundle_rows(dataset, name, fps, d[name], range(1, 21), target, pools)
    return rows


def report(
    args: argparse.Namespace,
    bundles: dict[str, FingerprintSet],
    d: dict[str, dict[str, list[int]]],
) -> None:
    names = list(bundles)
    variants = sorted({v for per in d.values() for v in per}, key=lambda v: (v == "identity", v))
    counts = {v: len(next(iter(d.values()))[v]) for v in variants}
    head = " | ".join(f"{name} DR@{ns}" for name in names for ns in args.ns)
    print(f"\n| variant | instances | {head} |")
    print("|---|---|" + "---|" * (len(names) * len(args.ns)))
    rows: dict[str, Any] = {}
    for variant in variants:
        cells = []
        for name in names:
            n = len(bundles[name])
            for ns in args.ns:
                if ns > n:  # fewer fingerprints than a check draws: no such check exists
                    cells.append("n/a")
                    rows.setdefault(name, {}).setdefault(variant, {})[f"ns{ns}"] = None
                    continue
                rate = detection_rate(d[name][variant], n, ns)
                cells.append(f"{rate.mean:.3f}")
                rows.setdefault(name, {}).setdefault(variant, {})[f"ns{ns}"] = {
                    "mean": rate.mean,
                    "low": rate.low,
                    "high": rate.high,
                }
        print(f"| {variant} | {counts[variant]} | " + " | ".join(cells) + " |")
    print("\n| method | N | s per fingerprint | forward passes per fp | backward passes per fp |")
    print("|---|---|---|---|---|")
    for name in names:
        m = bundles[name].manifest
        n = len(bundles[name])
        total = m.get("forward_passes", 0) + m.get("zoo_forward_passes", 0)
        back = m.get("backward_passes", 0) + m.get("zoo_backward_passes", 0)
        print(
            f"| {name} | {n} | {m.get('generation_seconds', float('nan')) / n:.3f} | "
            f"{total / n:.0f} | {back / n:.0f} |"
        )
    for name in names:
        non_identity = [v for v in variants if v != "identity"]
        if non_identity:
            worst = {
                ns: min(rows[name][v][f"ns{ns}"]["mean"] for v in non_identity)
                for ns in args.ns
                if ns <= len(bundles[name])
            }
            print(
                f"{name}: worst variant " + ", ".join(f"DR@{k} {v:.3f}" for k, v in worst.items())
            )
    if args.json is not None:
        payload = {
            "instances": str(args.instances),
            "n": {name: len(fps) for name, fps in bundles.items()},
            "d": {name: dict(per) for name, per in d.items()},
            "rates": rows,
        }
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
