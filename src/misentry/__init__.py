"""misentry: black-box integrity verification of deployed deep-learning classifiers.

The package is layered (see ``ARCHITECTURE`` in the README): :mod:`misentry.data` gives datasets and
deterministic pools, :mod:`misentry.models` gives architectures, the one training loop and the
content-addressed record format.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("misentry")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
