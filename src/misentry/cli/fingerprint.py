"""``misentry fingerprint``: generate a fingerprint bundle for a target record."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from misentry.cli.common import (
    CliError,
    Verbs,
    add_verb,
    console,
    err_console,
    fraction,
    stage_bars,
)

if TYPE_CHECKING:
    from misentry.fingerprint.bundle import FingerprintSet

DESCRIPTION = """\
Generate N fingerprint samples for a target record and write them to --out as a bundle folder:
fingerprints.safetensors (the 8-bit images, the target's top-1 label on each, the index of each
one's natural source image) and manifest.json (method, profile, parameters, seeds, target id,
per-sample statistics, cost). With a key (--key-file, or the MISENTRY_BUNDLE_KEY environment
variable) the bundle is signed with HMAC-SHA256, and a changed bundle is refused when loaded.
A verifier later sends the images to the deployed model and compares its top-1 labels.

Fingerprints start from the target's `source` pool (see `misentry data show`); MiSentry also
builds a zoo of subtly tampered copies of the target from the owner's held-out `val` pool;
PublicCheck and SSF-BO train a small autoencoder on the owner's `owner_train` pool.

methods:
  natural          unmodified source images: the floor every method must beat
  noise            source images plus uniform noise (--eps, default 8/255)
  ibsf             IBSF (Bai et al., ICML 2024): points where k decision boundaries
                   intersect, within an L2 ball around the source (--eps, default 1.0)
  ssf              SSF (He et al., CVPR 2019): samples whose output is most sensitive to the
                   output layer's weights, within an L-inf ball (--eps, default 8/255), chosen
                   to cover the most active neurons (MANC)
  publiccheck      PublicCheck (Wang et al., S&P 2023): pairs of images just either side of a
                   decision boundary, found along latent paths of an autoencoder between
                   sources of different labels, with top-1 label queries only (no gradients)
  ssf_bo           SSF-BO (Kuttichira et al., KBS 2022): the SSF sensitivity maximized over
                   the autoencoder's latent space by Gaussian-process Bayesian optimization,
                   starting from the source's code; 1-channel datasets only
  misentry         MiSentry: PGD against a zoo of tampered copies with meta-learning, then
                   8-bit refinement and screening; the strict profile unless --profile covert
  misentry-covert  MiSentry with the covert profile (= --method misentry --profile covert)

profiles (MiSentry only):
  strict  fingerprints sit where three decision boundaries meet (target confidence about
          1/3, the top three logits a tiny window apart): almost any change of the weights
          flips their label, so they catch the subtlest tampering, but they do not look
          like the queries real users send
  covert  each fingerprint's confidence, entropy and margin lie inside the normal band of
          real images of its label: they look like normal queries, and catch only the
          larger tamperings

tolerance: how differently you may serve the target without a false alarm. The fingerprints
keep every margin that decides their label above a safety multiple (4x) of the target's logit
noise under that serving freedom, measured here by emulation, and each one's flip rate is
recorded so that `misentry verify` can state a verdict's false-alarm risk:
  exact  the same float32 stack (research comparisons: the most sensitive, and a false alarm
         on any other numeric stack)
  fp32   any float32 execution: other kernels, threads, batch sizes, oneDNN on or off,
         TorchScript, ONNX Runtime, pixels converted another way or sent as JSON decimals
  tf32   (default) fp32 plus TF32 in convolutions and matrix products: any float32 server,
         CPU or GPU (TF32 convolutions are PyTorch's default on a GPU)
  fp16   tf32 plus the model run in float16 (or under float16 autocast)
  bf16   fp16 plus the model run in bfloat16 (or under bfloat16 autocast)
A looser tolerance catches less: it trades sensitivity for freedom (`misentry bench` measures
the price). Check a bundle with `misentry stability` before shipping it.

parameters: --norm, --eps and --set KEY=VALUE override single fields of the method's
parameters (VALUE is read as JSON when it parses, else as a string; a JSON list becomes a
tuple). --eps accepts a fraction such as 8/255. The names and defaults are in each method's
parameter class (e.g. misentry.fingerprint.methods.misentry.MisentryParams)."""

EPILOG = """\
examples:
  misentry fingerprint --method natural --target runs/target --n 100 --out runs/fp-natural
  misentry fingerprint --method misentry --profile covert --target runs/target --n 100 \\
      --out runs/fp-covert --key-file owner.key --export-png runs/fp-covert-png
  misentry fingerprint --method misentry --target runs/target --n 100 --out runs/fp \\
      --norm l2 --eps 1.5 --set steps=30 --set 'zoo=["ft_last:1e-4x4", "ft_all:1e-5x4"]'"""


def add(verbs: Verbs) -> None:
    """Register ``misentry fingerprint``."""
    from misentry.fingerprint.methods.misentry import Profile
    from misentry.fingerprint.tolerance import DEFAULT_TOLERANCE
    from misentry.models.stacks import LEVELS

    fp = add_verb(
        verbs,
        "fingerprint",
        "generate a fingerprint bundle for a target",
        run,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    fp.add_argument("--method", required=True, help="the method: one of those listed above")
    fp.add_argument(
        "--profile",
        choices=[profile.value for profile in Profile],
        help="MiSentry's profile (default strict); only with --method misentry",
    )
    fp.add_argument("--target", type=Path, required=True, help="target record folder")
    fp.add_argument(
        "--tolerance",
        choices=list(LEVELS),
        default=DEFAULT_TOLERANCE.value,
        help=f"serving freedom without a false alarm (default {DEFAULT_TOLERANCE.value})",
    )
    fp.add_argument("--n", type=int, default=100, help="number of fingerprints (default 100)")
    fp.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    fp.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    fp.add_argument("--norm", choices=("linf", "l2"), help="distance bound's norm (override)")
    fp.add_argument("--eps", type=fraction, help="distance bound in [0, 1] pixel units, e.g. 8/255")
    fp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter of the method (repeatable)",
    )
    fp.add_argument(
        "--key-file",
        type=Path,
        help="sign the bundle with this key (default: MISENTRY_BUNDLE_KEY if set, else unsigned)",
    )
    fp.add_argument(
        "--export-png", type=Path, metavar="DIR", help="also write a PNG sheet per fingerprint"
    )
    fp.add_argument("--root", type=Path, help="dataset folder, for datasets read from disk")
    fp.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    fp.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    """Make and save the bundle with :func:`misentry.fingerprint.service.make_bundle`, then
    print its summary."""
    from misentry.fingerprint.base import GenerationError
    from misentry.fingerprint.bundle import MANIFEST_FILE, load_key
    from misentry.fingerprint.service import make_bundle
    from misentry.models import RecordError

    if args.n < 1:
        raise CliError("--n must be at least 1")
    method = _method(args.method, args.profile)
    overrides = _overrides(args)
    if (args.out / MANIFEST_FILE).is_file() and not args.force:
        raise CliError(f"--out: {args.out} already holds a bundle; use --force to replace it")
    key = load_key(args.key_file)
    with stage_bars(err_console, transient=args.json) as on_progress:
        try:
            fps = make_bundle(
                args.target,
                method,
                args.n,
                args.out,
                seed=args.seed,
                overrides=overrides,
                root=args.root,
                key=key,
                progress=on_progress,
                replace=args.force,
                tolerance=args.tolerance,
            )
        except RecordError as err:
            raise CliError(f"--target: {err}") from None
        except GenerationError as err:
            raise CliError(str(err)) from None
    summary = _summary(fps, args.out, key is not None)
    summary["png"] = None if args.export_png is None else str(_export_png(fps, args))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _method(method: str, profile: str | None) -> str:
    """The registry's method for ``--method`` with ``--profile`` (MiSentry's profile by
    :class:`~misentry.fingerprint.methods.misentry.Profile`)."""
    from misentry.fingerprint.methods.misentry import Profile

    if profile is None:
        return method
    given = Profile.of_method(method)  # misentry: strict; misentry-covert: covert
    if given is Profile.STRICT or given is Profile(profile):  # misentry, or a repeated profile
        return Profile(profile).method
    raise CliError(
        f"--profile applies to --method misentry only, not {method!r} "
        "(misentry-covert is the covert profile already)"
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set KEY=VALUE`` (by :func:`~misentry.fingerprint.service.parse_overrides`),
    ``--norm`` and ``--eps`` as one dict of parameter values."""
    from misentry.fingerprint.service import parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        raise CliError(f"--set {err}") from None
    for key, value in (("norm", args.norm), ("eps", args.eps)):
        if value is not None:
            if key in overrides:
                raise CliError(f"{key} is given both as --{key} and with --set; give it once")
            overrides[key] = value
    return overrides


def _export_png(fps: FingerprintSet, args: argparse.Namespace) -> Path:
    """Write the PNG sheets (source, fingerprint, difference) to --export-png."""
    from misentry.data import get_dataset
    from misentry.fingerprint.export import export_png

    manifest = fps.manifest
    pools = get_dataset(manifest["dataset"]).pools(manifest["data_seed"], args.root)
    export_png(fps, pools["source"], args.export_png)
    return Path(args.export_png)


def _summary(fps: FingerprintSet, out: Path, signed: bool) -> dict[str, Any]:
    """What the summary shows: the manifest's method, profile, medians, distances and cost."""
    manifest, labels = fps.manifest, fps.labels.tolist()
    samples = manifest.get("samples", [])

    def column(key: str) -> list[float]:
        return [float(row[key]) for row in samples if row.get(key) is not None]

    def median(key: str) -> float | None:
        values = column(key)
        return statistics.median(values) if values else None

    def largest(key: str) -> float | None:
        values = column(key)
        return max(values) if values else None

    screening = manifest.get("screening")
    tolerance = manifest.get("tolerance")
    rates = column("flip_rate")
    return {
        "method": manifest.get("method"),
        "profile": manifest.get("profile"),
        "n": len(labels),
        "distinct_labels": len(set(labels)),
        "median_confidence": median("confidence"),
        "median_margin": median("margin"),
        "max_linf": largest("linf"),
        "max_l2": largest("l2"),
        "generation_seconds": manifest.get("generation_seconds"),
        "forward_passes": manifest.get("forward_passes"),
        "backward_passes": manifest.get("backward_passes"),
        "screening": screening if isinstance(screening, dict) else None,
        "tolerance": tolerance.get("tolerance") if isinstance(tolerance, dict) else None,
        "tolerance_floor": tolerance.get("floor") if isinstance(tolerance, dict) else None,
        "tolerance_noise": tolerance.get("noise") if isinstance(tolerance, dict) else None,
        "unstable_under_tolerance": sum(1 for row in samples if row.get("flips")),
        "max_flip_rate": max(rates) if rates else None,
        "path": str(out),
        "signed": signed,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title=f"fingerprint bundle {summary['path']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("method", str(summary["method"]))
    if summary["profile"] is not None:
        table.add_row("profile", str(summary["profile"]))
    labels = summary["distinct_labels"]
    plural = "" if labels == 1 else "s"
    table.add_row("fingerprints", f"{summary['n']} ({labels} distinct label{plural})")
    table.add_row("median confidence", number(summary["median_confidence"], ".4f"))
    table.add_row("median margin", number(summary["median_margin"], ".3g") + " logits")
    linf = number(None if summary["max_linf"] is None else summary["max_linf"] * 255, ".1f")
    table.add_row("max distance", f"L-inf {linf}/255, L2 {number(summary['max_l2'], '.3f')}")
    table.add_row("generation", f"{number(summary['generation_seconds'], '.1f')} s")
    table.add_row(
        "passes", f"{summary['forward_passes']:,} forward, {summary['backward_passes']:,} backward"
    )
    screening = summary["screening"]
    if screening is not None:
        table.add_row(
            "screening",
            f"{screening.get('unstable', 0)} unstable, {screening.get('outside_window', 0)} "
            "outside the window (of all candidates)",
        )
    if summary["tolerance"] is not None:
        table.add_row(
            "tolerance",
            f"{summary['tolerance']}: noise {number(summary['tolerance_noise'], '.3g')}, "
            f"floor {number(summary['tolerance_floor'], '.3g')} logits; "
            f"{summary['unstable_under_tolerance']} fingerprints change label under it, "
            f"largest flip rate {number(summary['max_flip_rate'], '.2g')}",
        )
    table.add_row("signed", "yes (HMAC-SHA256)" if summary["signed"] else "no")
    if summary["png"] is not None:
        table.add_row("PNG sheets", summary["png"])
    console.print(table)
