"""Record a label oracle's answers and replay them offline.

:class:`RecordingOracle` wraps any :class:`~misentry.models.oracle.LabelOracle` and remembers the
label of every image it passes on, keyed by the SHA-256 of the image's bytes (uint8, C×H×W,
row-major). :meth:`RecordingOracle.save` writes them as JSON (no pickle);
:meth:`RecordedOracle.load` reads such a file and answers the same images with the same labels,
without the model: for tests, for re-running a verification, and as evidence of what a deployed
model answered. An image that was never recorded raises ``OracleError("unrecorded", …)``, which
the verifier treats like any other failed query (inconclusive).

File format (version 1)::

    {"format": "misentry-oracle-recording", "version": 1,
     "oracle": "<the wrapped oracle's describe()>", "num_classes": 10 or null,
     "conflicts": 0, "entries": {"<sha256 hex>": <label>, ...}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from misentry.atomic import write_text_atomic
from misentry.models.oracle import LabelOracle, OracleError

log = logging.getLogger(__name__)

FORMAT = "misentry-oracle-recording"
VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def image_key(image: torch.Tensor) -> str:
    """The SHA-256 (hex) of one uint8 image's bytes, C×H×W row-major."""
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()


class RecordingOracle(LabelOracle):
    """Pass queries on to ``inner`` and record each image's label.

    The inner oracle keeps its own batching, budget and deadline; this wrapper takes its
    ``num_classes`` and ``batch_size`` and adds no limit of its own. Only answers that passed
    the checks are recorded. If the same image is answered twice with different labels (a
    nondeterministic model), the first label is kept and :attr:`conflicts` counts the
    disagreement.

    >>> recording = RecordingOracle(HttpOracle(url, num_classes=10))  # doctest: +SKIP
    >>> recording.labels(images)  # doctest: +SKIP
    >>> recording.save("answers.json")  # doctest: +SKIP
    >>> RecordedOracle.load("answers.json").labels(images)  # doctest: +SKIP
    """

    def __init__(self, inner: LabelOracle) -> None:
        super().__init__(num_classes=inner.num_classes, batch_size=inner.batch_size)
        self.inner = inner
        self.entries: dict[str, int] = {}
        self.conflicts = 0

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        labels = self.inner.labels(images)
        for image, label in zip(images, labels.tolist(), strict=True):
            key = image_key(image)
            known = self.entries.setdefault(key, int(label))
            if known != label:
                self.conflicts += 1
                log.warning("image %s… answered %d, recorded %d before", key[:12], label, known)
        return labels

    def describe(self) -> str:
        return f"recording of {self.inner.describe()}"

    def to_json(self) -> dict[str, Any]:
        """The recording as the JSON document :meth:`save` writes."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "oracle": self.inner.describe(),
            "num_classes": self.num_classes,
            "conflicts": self.conflicts,
            "entries": dict(sorted(self.entries.items())),
        }

    def save(self, path: Path | str) -> Path:
        """Write the recording as JSON (atomically: a reader never sees half a file)."""
        return write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    def replay(self) -> RecordedOracle:
        """A :class:`RecordedOracle` of what was recorded so far, without a file."""
        return RecordedOracle(
            self.entries,
            source=self.inner.describe(),
            num_classes=self.num_classes,
            batch_size=self.batch_size,
        )


class RecordedOracle(LabelOracle):
    """Answer from a recording: each image's label looked up by the SHA-256 of its bytes.

    Arguments:
        entries: image key (:func:`image_key`) to label.
        source: what was recorded (the recorded oracle's ``describe()``), for reports.
        num_classes, batch_size, budget, deadline: as in :class:`LabelOracle`.

    Raises ``OracleError("unrecorded", …)`` for an image the recording does not hold.
    """

    def __init__(
        self,
        entries: Mapping[str, int],
        *,
        source: str = "",
        num_classes: int | None = None,
        batch_size: int = 64,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, batch_size=batch_size, budget=budget, deadline=deadline
        )
        self.entries = dict(entries)
        self.source = source

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        num_classes: int | None = None,
        batch_size: int = 64,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> RecordedOracle:
        """Read a file written by :meth:`RecordingOracle.save`; ValueError if it is not one.
        ``num_classes`` None takes the file's; the other limits are as in :class:`LabelOracle`.
        """
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a JSON oracle recording ({err})") from None
        entries, recorded_classes = _parse(document, path)
        return cls(
            entries,
            source=str(document.get("oracle", "")),
            num_classes=recorded_classes if num_classes is None else num_classes,
            batch_size=batch_size,
            budget=budget,
            deadline=deadline,
        )

    def _query(self, images: torch.Tensor) -> list[int]:
        labels = []
        for index, image in enumerate(images):
            key = image_key(image)
            label = self.entries.get(key)
            if label is None:
                raise OracleError(
                    "unrecorded",
                    f"image {index} of the batch (sha256 {key[:16]}…) is not in the recording "
                    f"of {self.source or 'the oracle'}; record the same images again",
                )
            labels.append(label)
        return labels

    def describe(self) -> str:
        return f"recorded {self.source or 'oracle'} ({len(self.entries)} images)"


def _parse(document: Any, path: Path) -> tuple[dict[str, int], int | None]:
    """The entries and class count of a recording document, checked."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f'{path}: not an oracle recording (no "format": "{FORMAT}")')
    if document.get("version") != VERSION:
        raise ValueError(
            f"{path}: recording format version {document.get('version')!r}; this misentry "
            f"reads version {VERSION}"
        )
    num_classes = document.get("num_classes")
    if num_classes is not None and (type(num_classes) is not int or num_classes < 1):
        raise ValueError(f"{path}: num_classes must be a positive integer or null")
    entries = document.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f'{path}: "entries" must map image sha256 to label')
    for key, label in entries.items():
        if not _SHA256.match(key) or type(label) is not int:
            raise ValueError(
                f"{path}: bad entry {key!r}: {label!r} (expected 64 hex digits: an integer label)"
            )
    return entries, num_classes
