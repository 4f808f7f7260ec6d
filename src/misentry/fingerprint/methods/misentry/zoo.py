"""The representative model zoo of MiSentry: subtly tampered copies of the target, built by the
fingerprint generator itself from the owner's data.

The zoo uses the BIVBench recipes of :mod:`misentry.tamper.families.fine_tuning` and
:mod:`misentry.tamper.families.retraining` (fine-tune the last layer, fine-tune all layers,
retrain the last or all layers), run in the ``zoo`` namespace: seeds derived from that
namespace only, and data from the owner's held-out ``val`` pool only, which the target never
trained on. The namespace refuses any read of ``attacker`` or ``test``, so no zoo model can share
a seed or an image with an instance the benchmark evaluates.

**Update sizes.** A zoo fine-tuned on data the target already fits moves far less than a real
update on fresh data, so ``val`` (fresh to the target) is the training data, and each
fine-tuning member runs ``epochs`` passes so that its step count matches one pass over a
tamperer's pool four times the size of ``val`` (the benchmark's ``attacker`` pool is 20 % of a
dataset, ``val`` 5 %). :func:`update_size` reports the relative weight change of every member
so the calibration can be checked against real instances.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from misentry.data import Pools, get_dataset
from misentry.models import Record, load_record, model_from_record, model_record, save_record
from misentry.models.spec import InputSpec
from misentry.models.target import input_spec
from misentry.tamper.base import TamperContext, Tampering
from misentry.tamper.families.fine_tuning import FineTuning, FineTuningParams
from misentry.tamper.families.retraining import Retraining, RetrainingParams
from misentry.tamper.namespace import DataAccess, Namespace, instance_seed
from misentry.tamper.recipes import Layers

ZOO_KINDS = ("ft_last", "ft_all", "retrain_last", "retrain_all")

_MEMBER = re.compile(r"(?P<kind>[a-z_]+)(?::(?P<lr>[^x]*))?(?:x(?P<epochs>.*))?")
"""``kind[:lr][xEPOCHS]`` (kinds hold no ``x``)."""


@dataclass(frozen=True)
class ZooMember:
    """One kind of zoo model: a recipe, its learning rate and its epochs over ``val``.

    Written as a string ``kind[:lr][xEPOCHS]``, e.g. ``ft_last:1e-4x4`` or ``retrain_last``.
    """

    kind: str
    lr: float | None = None
    epochs: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ZOO_KINDS:
            raise ValueError(f"zoo member kind {self.kind!r}: expected one of {ZOO_KINDS}")
        if (self.lr is not None and self.lr <= 0) or self.epochs < 1:
            raise ValueError(f"zoo member {self}: lr must be positive and epochs >= 1")

    @classmethod
    def parse(cls, text: str) -> ZooMember:
        """``ft_last:1e-4x4`` -> ZooMember("ft_last", 1e-4, 4); lr and epochs are optional
        (``retrain_last``, ``retrain_lastx4``), so ``parse(str(member)) == member``."""
        found = _MEMBER.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"zoo member {text!r}: expected kind[:lr][xEPOCHS]")
        try:
            lr = float(found["lr"]) if found["lr"] else None
            epochs = int(found["epochs"]) if found["epochs"] else 4
        except ValueError:
            raise ValueError(f"zoo member {text!r}: expected kind[:lr][xEPOCHS]") from None
        return cls(found["kind"], lr, epochs)

    def __str__(self) -> str:
        lr = "" if self.lr is None else f":{self.lr:g}"
        return f"{self.kind}{lr}x{self.epochs}"

    def tampering(self) -> Tampering:
        layers: Layers = "last" if self.kind.endswith("last") else "all"
        if self.kind.startswith("ft"):
            return FineTuning(
                FineTuningParams(layers=layers, lr=self.lr or 1e-4, epochs=self.epochs)
            )
        return Retraining(RetrainingParams(layers=layers, lr=self.lr or 1e-3))


@dataclass
class ZooModel:
    """A built zoo model: which member and replicate it is, the model, its update size, the
    seconds building it took, and whether it was loaded (built beforehand) rather than built."""

    name: str
    model: nn.Module
    relative_update: float
    seconds: float
    loaded: bool = False


def update_size(target: nn.Module, model: nn.Module) -> float:
    """``||theta_model - theta_target|| / ||theta_target||`` over all parameters."""
    diff = total = 0.0
    for a, b in zip(target.parameters(), model.parameters(), strict=True):
        diff += float((b.detach() - a.detach()).pow(2).sum())
        total += float(a.detach().pow(2).sum())
    return float((diff / max(total, 1e-30)) ** 0.5)


def zoo_name(member: ZooMember | str, replicate: int) -> str:
    """A zoo model's name: ``member#replicate`` (its member and replicate fix its seed)."""
    return f"{member}#{replicate}"


def build_zoo(
    target: nn.Module,
    record: Record,
    pools: Pools,
    members: Iterable[ZooMember],
    replicates: int,
    first_replicate: int = 0,
    on_model: Callable[[ZooModel], None] | None = None,
    stored: Mapping[str, Path] | None = None,
) -> list[ZooModel]:
    """``replicates`` models of every member, in the ``zoo`` namespace.

    Replicate ``r`` of member ``m`` gets the seed ``instance_seed(zoo, str(m), r)``; disjoint
    ranges of ``first_replicate`` give disjoint zoos (MiSentry keeps one for meta-learning and
    one, held out, for screening). A model named in ``stored`` (:func:`zoo_name` -> the folder
    :func:`save_zoo_model` wrote) is loaded instead of built; it must have been built from
    ``record``'s target.
    """
    data = DataAccess(pools, Namespace.ZOO)
    dataset = get_dataset(record.dataset)
    spec = record_spec(record)
    base = _unhooked(target)
    zoo: list[ZooModel] = []
    for member in members:
        tampering = member.tampering()
        for replicate in range(first_replicate, first_replicate + replicates):
            name = zoo_name(member, replicate)
            if stored is not None and name in stored:
                built = load_zoo_model(stored[name], record)
            else:
                started = time.perf_counter()
                ctx = TamperContext(
                    target=base,
                    target_record=record,
                    data=data,
                    seed=instance_seed(Namespace.ZOO, str(member), replicate),
                    dataset=dataset,
                    spec=spec,
                    index=replicate,
                )
                model = tampering.build(ctx).model.eval()
                seconds = time.perf_counter() - started
                built = ZooModel(name, model, update_size(target, model), seconds)
            for parameter in built.model.parameters():
                parameter.requires_grad_(False)
            zoo.append(built)
            if on_model is not None:
                on_model(built)
    return zoo


def record_spec(record: Record) -> InputSpec:
    """The input spec the target record states (an imported model's follows its input
    contract, not the dataset's normalization), else its registered dataset's."""
    return (
        InputSpec.from_json(record.input)
        if record.input is not None
        else input_spec(record.dataset)
    )


def _unhooked(target: nn.Module) -> nn.Module:
    """A copy of ``target`` without forward hooks. A caller counting the target's passes hooks
    it (:func:`~misentry.fingerprint.base.count_passes`); zoo models are copies of the target,
    and copies made from the hooked target kept counting into the target's count, through
    their training and through the whole search."""
    clean = copy.deepcopy(target)
    for module in clean.modules():
        if not isinstance(module, torch.jit.ScriptModule):  # which runs no Python hooks
            module._forward_hooks.clear()
    return clean


def save_zoo_model(model: ZooModel, target: Record, path: Path | str) -> Path:
    """Write a built zoo model as a record (kind ``tampered``, namespace ``zoo``) at ``path``;
    its build time and update size are kept in its metrics."""
    member, replicate = model.name.rsplit("#", 1)
    if target.input is None or target.architecture is None:
        raise ValueError(f"target {target.record_id[:16]} has no input spec or architecture")
    record = model_record(
        model.model,
        kind="tampered",
        dataset=target.dataset,
        architecture=target.architecture,
        spec=InputSpec.from_json(target.input),
        data_seed=target.data_seed,
        model_seed=instance_seed(Namespace.ZOO, member, int(replicate)),
        params={
            "namespace": Namespace.ZOO.value,
            "zoo_member": member,
            "replicate": int(replicate),
        },
        parent=target.record_id,
        metrics={"build_seconds": model.seconds, "relative_update": model.relative_update},
    )
    save_record(record, path, overwrite=True)
    return Path(path)


def load_zoo_model(path: Path | str, target: Record) -> ZooModel:
    """The zoo model :func:`save_zoo_model` wrote at ``path``, checked to come from ``target``."""
    record = load_record(path)
    params = record.params
    if record.parent != target.record_id or params.get("namespace") != Namespace.ZOO.value:
        raise ValueError(
            f"{path} is not a zoo model of target {target.record_id[:16]} "
            f"(parent {str(record.parent)[:16]}, namespace {params.get('namespace')!r})"
        )
    return ZooModel(
        zoo_name(params["zoo_member"], params["replicate"]),
        model_from_record(record).eval(),
        float(record.metrics["relative_update"]),
        float(record.metrics["build_seconds"]),
        loaded=True,
    )


def zoo_summary(zoo: list[ZooModel]) -> list[dict[str, Any]]:
    """Manifest entries: each zoo model's name, relative update size and build time."""
    return [
        {"name": m.name, "relative_update": m.relative_update, "seconds": round(m.seconds, 3)}
        for m in zoo
    ]


def zoo_logit_changes(target: nn.Module, zoo: list[ZooModel], x: torch.Tensor) -> torch.Tensor:
    """Logit changes ``F_r(x) - F_p(x)`` of every zoo model, shape (R, N, classes)."""
    with torch.no_grad():
        base = target(x)
        return torch.stack([m.model(x) - base for m in zoo])
