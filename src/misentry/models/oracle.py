"""Label oracles: the black-box boundary between misentry and a model it checks.

A :class:`LabelOracle` takes 8-bit images and returns one top-1 label per image, nothing else.
Every adapter (an in-process module, an ONNX file, an Open Inference Protocol endpoint, a
recording) implements :meth:`LabelOracle._query` for one batch; the base class does what they
all share: it splits work into batches, counts queries, honours the query budget and the
deadline, and checks every answer (one label per image, each an integer inside the class range).
Anything wrong raises :class:`OracleError` with a reason, which the verifier turns into an
``INCONCLUSIVE`` verdict: a failed query never counts as an intact model.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from misentry.data import to_unit
from misentry.models.train import predict


class OracleError(RuntimeError):
    """A query could not be answered properly; ``reason`` is a short machine-readable kind
    (``budget``, ``deadline``, ``malformed``, ``short``, ``out_of_range``, ``transport``,
    ``server``, ``timeout``, ``unrecorded``) and the message says what happened."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LabelOracle(ABC):
    """Top-1 labels of uint8 images (N, C, H, W), counted, batched, budgeted, with a deadline.

    Arguments:
        num_classes: labels must lie in ``[0, num_classes)``; None skips the range check.
        batch_size: images per request to the model.
        budget: the most images this oracle may send in its life; None: unlimited.
        deadline: seconds from the first query after which no further request starts;
            None: no deadline. (A request already running is bounded by the adapter's own
            timeout.)
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        batch_size: int = 64,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"LabelOracle: batch_size must be >= 1, not {batch_size}")
        if budget is not None and budget < 0:
            raise ValueError(f"LabelOracle: budget must be >= 0, not {budget}")
        if deadline is not None and not deadline > 0:
            raise ValueError(f"LabelOracle: deadline must be positive seconds, not {deadline}")
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.budget = budget
        self.deadline = deadline
        self.queries = 0
        self.requests = 0
        self._started: float | None = None

    @property
    def remaining(self) -> int | None:
        """Images the budget still allows (None: unlimited)."""
        return None if self.budget is None else max(0, self.budget - self.queries)

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """The model's top-1 label of each image, int64 (N,). Raises :class:`OracleError`."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"LabelOracle.labels takes uint8 images (N, C, H, W), not {images.dtype} "
                f"{tuple(images.shape)}"
            )
        n = int(images.shape[0])
        if self.budget is not None and self.queries + n > self.budget:
            raise OracleError(
                "budget",
                f"query budget exhausted: {n} images asked, {self.remaining} of {self.budget} left",
            )
        if self._started is None:
            self._started = time.monotonic()
        out = []
        for start in range(0, n, self.batch_size):
            self._check_deadline()
            batch = images[start : start + self.batch_size]
            self.queries += int(batch.shape[0])
            self.requests += 1
            answer = self._query(batch)
            out.append(self._check_answer(answer, int(batch.shape[0])))
        return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)

    def _check_deadline(self) -> None:
        if self.deadline is None or self._started is None:
            return
        spent = time.monotonic() - self._started
        if spent > self.deadline:
            raise OracleError(
                "deadline", f"deadline of {self.deadline:g} s passed ({spent:.1f} s spent)"
            )

    def _seconds_left(self) -> float | None:
        """Seconds until the deadline (negative once passed); None without a deadline or before
        the first query. Adapters use it to keep retries and backoff inside the deadline."""
        if self.deadline is None or self._started is None:
            return None
        return self.deadline - (time.monotonic() - self._started)

    def _check_answer(self, answer: Sequence[int] | torch.Tensor, expected: int) -> torch.Tensor:
        try:
            labels = torch.as_tensor(answer)
        except (TypeError, ValueError) as err:
            raise OracleError("malformed", f"the answer is not a list of labels: {err}") from None
        labels = labels.reshape(-1)
        if labels.is_floating_point() or labels.dtype == torch.bool:
            whole = labels.is_floating_point() and bool((labels == labels.round()).all())
            if not whole:
                raise OracleError("malformed", f"labels must be integers, got {labels.dtype}")
        if labels.numel() != expected:
            raise OracleError("short", f"{labels.numel()} labels came back for {expected} images")
        labels = labels.to(torch.int64)
        if self.num_classes is not None and labels.numel():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise OracleError(
                    "out_of_range",
                    f"label {low if low < 0 else high} is outside [0, {self.num_classes})",
                )
        return labels

    @abstractmethod
    def _query(self, images: torch.Tensor) -> Sequence[int] | torch.Tensor:
        """Labels of one batch of uint8 images, as returned by the model (checked by the base)."""

    def describe(self) -> str:
        """A short human-readable name of what is queried (for reports)."""
        return type(self).__name__


class ModuleOracle(LabelOracle):
    """An in-process ``nn.Module`` (e.g. from :func:`misentry.models.model_from_record`), run in
    eval mode without gradients on the images scaled to [0, 1]."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int | None = None,
        batch_size: int = 64,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, batch_size=batch_size, budget=budget, deadline=deadline
        )
        self.model = model

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        return predict(self.model, to_unit(images))

    def describe(self) -> str:
        return f"module {type(self.model).__name__}"
