"""Label changes of the untampered target on a bundle's fingerprints under benign re-deployments.

Every batch size from 1 to 256, 1 and 2 threads, float64 weights and inputs, channels-last
memory format: each must give exactly the bundle's expected labels (a change would be a false
"tampered" alarm on an intact model). Prints one line per bundle:

    .venv/bin/python benchmarks/stability.py --target runs/target runs/fp-final/misentry
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from misentry.fingerprint.bundle import load_bundle
from misentry.models import load_model, logits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", type=Path, required=True, help="target record")
    parser.add_argument("bundles", type=Path, nargs="+", help="bundle folders")
    args = parser.parse_args()
    target, _ = load_model(args.target)
    threads = torch.get_num_threads()
    for path in args.bundles:
        fps = load_bundle(path)
        x, expected = fps.x, fps.labels
        changed: dict[str, int] = {}
        try:
            for count in (1, 2):
                torch.set_num_threads(count)
                worst = 0
                for batch in range(1, 257):
                    worst = max(worst, int((logits(target, x, batch).argmax(1) != expected).sum()))
                changed[f"batch 1-256, {count} thread(s)"] = worst
        finally:
            torch.set_num_threads(threads)
        wide = copy.deepcopy(target).double()
        changed["float64"] = int((logits(wide, x.double()).argmax(1) != expected).sum())
        cl = copy.deepcopy(target).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        xc = x.contiguous(memory_format=torch.channels_last)
        changed["channels-last"] = int((logits(cl, xc).argmax(1) != expected).sum())
        summary = ", ".join(f"{k}: {v}" for k, v in changed.items())
        print(f"{path} (N = {len(fps)}): label changes {summary}")


if __name__ == "__main__":
    main()
