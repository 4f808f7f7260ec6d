"""What goes over the wire to a deployed model: its own input, as its input contract states it.

misentry keeps images as 8-bit pixels everywhere; a registry model takes them in [0, 1], channels
first (the identity contract). A model the user imported takes what it was trained on: values in
0-1 or 0-255, normalized by its mean and std, perhaps channels last
(:class:`~misentry.models.InputContract`). The user's ONNX file and production server take that
input, so every oracle that talks to a deployed model sends the images encoded by the bundle's
contract (:func:`encode_images`), and ``misentry serve`` and the MLServer runtime take it and run
the user's model on it as it is (:func:`wire_model`). One bundle then verifies the user's own
server, ``misentry serve`` and MLServer alike.
"""

from __future__ import annotations

import torch
from torch import nn

from misentry.data import to_unit
from misentry.fingerprint.bundle import CONTRACT_KEY, bundle_contract, model_contract
from misentry.models import ContractAdapter, InputContract

__all__ = [
    "CONTRACT_KEY",
    "bundle_contract",
    "contract_bounds",
    "describe_contract",
    "encode_images",
    "model_contract",
    "wire_model",
]


def encode_images(images: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """uint8 images (N, C, H, W) as the model behind ``contract`` takes them: float32,
    ``contract.encode`` of the pixels in [0, 1] (N, H, W, C when channels last). The very values
    an in-process :class:`~misentry.models.ContractAdapter` hands its model."""
    with torch.no_grad():
        return contract.encode(to_unit(images)).to(torch.float32).contiguous()


def wire_model(model: nn.Module) -> tuple[nn.Module, InputContract]:
    """The module that takes what goes over the wire, and the contract of that input.

    A registry model takes pixels in [0, 1] (identity contract) and is returned as it is; an
    imported model's own module is returned (behind an identity adapter when it runs on a fixed
    batch size only, which the adapter pads to), so it runs on the contract-encoded tensor as
    the user's server would.
    """
    if not isinstance(model, ContractAdapter) or model.contract.is_identity:
        return model, InputContract()
    if model.fixed_batch is None:
        return model.model.eval(), model.contract
    inner = ContractAdapter(
        model.model, InputContract(), fixed_batch=model.fixed_batch, fixed_mode=model.fixed_mode
    )
    return inner.eval(), model.contract


def contract_bounds(contract: InputContract, channels: int) -> tuple[float, float]:
    """The least and the greatest value the contract's encoding of pixels in [0, 1] takes, over
    all channels: a server checks that an input lies within them."""
    ends = contract.encode(torch.stack([torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1)]))
    return float(ends.min()), float(ends.max())


def describe_contract(contract: InputContract) -> str:
    """A short text of the contract, for messages: ``0-255, mean (77,), std (96,), NHWC``."""
    parts = [contract.input_range]
    if contract.mean is not None:
        parts.append(f"mean {contract.mean}")
    if contract.std is not None:
        parts.append(f"std {contract.std}")
    parts.append("NHWC" if contract.channels_last else "NCHW")
    return ", ".join(parts)
