"""``misentry data``: list the datasets and show one cut into its pools."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from misentry.cli.common import Verbs, add_group, add_verb, console

SHOW_DESCRIPTION = """\
Load a dataset, cut it into its five pools with --data-seed, and print the size of each pool and \
its images per class.

Pools: owner_train (the owner trains the target and its fingerprint zoo here), attacker (data \
of a tamperer or a benign updater), val (tuning), test (accuracy, label flips), source (natural \
images that fingerprints start from)."""


USER_ROWS = (
    (
        "imagefolder:CxHxW",
        "folder (--root)",
        "your images, one folder per class (C 1 or 3); resized and centre-cropped to HxW",
    ),
    (
        "csv:CxHxW",
        "CSV file (--root)",
        "your images listed as path,label rows; resized and centre-cropped to HxW",
    ),
)
"""The rows of ``data list`` for the user datasets: name pattern, source, description."""


def add(verbs: Verbs) -> None:
    """Register ``misentry data list`` and ``misentry data show``."""
    sub = add_group(verbs, "data", "list datasets and show their pools")
    add_verb(sub, "list", "list the known datasets and the names of your own", run_list)
    show = add_verb(
        sub,
        "show",
        "show a dataset and the sizes of its pools",
        run_show,
        description=SHOW_DESCRIPTION,
    )
    show.add_argument(
        "name", help="dataset name (see `misentry data list`), e.g. mnist5k or imagefolder:3x32x32"
    )
    show.add_argument(
        "--root",
        type=Path,
        help="dataset folder (or CSV manifest for csv:CxHxW), for datasets read from disk",
    )
    show.add_argument("--data-seed", type=int, default=0, help="seed of the split (default 0)")


def run_list(_args: argparse.Namespace) -> int:
    """Print the registered datasets, then the two names for the user's own images."""
    from misentry.data import DATASETS

    table = Table(title="datasets")
    for col in ("name", "shape", "classes", "source", "target arch", "description"):
        table.add_column(col, no_wrap=col == "name", min_width=17 if col == "name" else None)
    for info in DATASETS.values():
        table.add_row(
            info.name,
            "x".join(map(str, info.input_shape)),
            str(info.num_classes),
            "folder (--root)" if info.needs_root else "embedded",
            info.default_arch,
            info.description,
        )
    for name, source, description in USER_ROWS:
        table.add_row(name, "CxHxW", "from data", source, "resnet20 / lenet5", description)
    console.print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print a dataset and the sizes of its pools (or, without --root for a dataset read from
    disk, the folder layout it expects)."""
    from misentry.data import POOL_NAMES, get_dataset

    info = get_dataset(args.name)
    console.print(f"[bold]{info.name}[/]: {info.description}")
    classes = str(info.num_classes) if info.num_classes else "known from the data"
    console.print(
        f"input {'x'.join(map(str, info.input_shape))}, classes: {classes}, "
        f"mean {info.mean}, std {info.std}, target architecture {info.default_arch}"
    )
    shares = info.fractions.as_dict()
    if info.needs_root and args.root is None:
        console.print(f"read from a folder with --root DIR; expected layout:\n{info.layout}")
        console.print(
            "pool shares per class: "
            + ", ".join(f"{name} {shares[name]:.0%}" for name in POOL_NAMES)
        )
        return 0
    with console.status(f"loading {info.name}…"):
        pools = info.pools(args.data_seed, args.root)
    names = pools["owner_train"].classes
    if names is not None:
        console.print(
            f"{len(names)} classes (label: name): "
            + ", ".join(f"{label}: {name}" for label, name in enumerate(names))
        )
    num_classes = len(names) if names is not None else info.num_classes
    table = Table(title=f"pools of {info.name} (data seed {args.data_seed})")
    for col in ("pool", "share", "images", "per class (min-max)"):
        table.add_column(col, justify="right" if col != "pool" else "left")
    for name in POOL_NAMES:
        counts = pools[name].class_counts(num_classes)
        present = counts[counts > 0]
        span = f"{int(present.min())}-{int(present.max())}" if present.numel() else "-"
        table.add_row(name, f"{shares[name]:.0%}", str(len(pools[name])), span)
    console.print(table)
    return 0
