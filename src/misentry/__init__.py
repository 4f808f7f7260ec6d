"""misentry: black-box integrity verification of deployed deep-learning classifiers.

The package is layered, and a layer imports only the layers before it: :mod:`misentry.data`
(datasets and deterministic pools), :mod:`misentry.models` (architectures, the one training loop,
the shared PGD loop, the content-addressed record format, the label-oracle protocol),
:mod:`misentry.tamper` (BIVBench, the tampered variants), :mod:`misentry.fingerprint` (the
generators and the bundle), :mod:`misentry.verify` and :mod:`misentry.serve` (checking and serving a
deployed model), :mod:`misentry.bench` (the benchmark and its report) and :mod:`misentry.cli` (the
command line). The README's "Layout" section lists what each folder holds.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("misentry")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
