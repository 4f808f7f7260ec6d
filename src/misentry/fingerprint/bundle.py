"""The fingerprint bundle: what a generator writes and a verifier reads.

A bundle is a folder::

    fingerprints.safetensors  uint8 images (N, C, H, W), expected labels, source indices
    manifest.json             method, profile, parameters, seeds, target record id, dataset,
                              per-sample statistics, generation cost, the SHA-256 of the tensor
                              file and, optionally, an HMAC-SHA256 signature

Images are stored on the 8-bit lattice, exactly as they will be sent to a model. The signature
covers the tensor file's hash and the whole manifest, so a bundle whose images, labels or
manifest changed after signing is refused; loading says which check failed. Keys come from a
file or the ``MISENTRY_BUNDLE_KEY`` environment variable, never from the bundle.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from misentry.data.images import to_unit
from misentry.models import ContractAdapter, InputContract
from misentry.models.record import canonical_json, sha256_file

TENSOR_FILE = "fingerprints.safetensors"
MANIFEST_FILE = "manifest.json"
BUNDLE_VERSION = 1
KEY_ENV = "MISENTRY_BUNDLE_KEY"
CONTRACT_KEY = "input_contract"
"""The manifest entry with the target's input contract (``InputContract.to_json``)."""


class BundleError(ValueError):
    """A bundle is missing, malformed, changed, or fails its signature check."""


def model_contract(model: nn.Module) -> InputContract:
    """The input contract ``model`` applies in front of itself (identity for a registry model)."""
    return model.contract if isinstance(model, ContractAdapter) else InputContract()


def bundle_contract(manifest: Mapping[str, Any]) -> InputContract:
    """The input contract a bundle's manifest records (identity when it records none, as
    bundles made before contracts existed, all of registry targets)."""
    data = manifest.get(CONTRACT_KEY)
    if data is None:
        return InputContract()
    if not isinstance(data, dict):
        raise BundleError(f"the bundle's {CONTRACT_KEY} is not an object: {data!r}")
    return InputContract.from_json(data)


@dataclass(frozen=True)
class FingerprintSet:
    """Fingerprint images with the labels the untampered target gives them.

    Attributes:
        images: uint8 (N, C, H, W), the 8-bit images sent to the model.
        labels: int64 (N,), the target's top-1 labels on ``images``.
        source_indices: int64 (N,), index of each sample's natural source image in the
            ``source`` pool (-1 when there is none).
        manifest: method, profile, parameters, seeds, target id, dataset, per-sample
            statistics (``samples``: one dict per fingerprint), cost.
    """

    images: torch.Tensor
    labels: torch.Tensor
    source_indices: torch.Tensor
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0] if self.images.dim() == 4 else -1
        if self.images.dtype != torch.uint8 or n < 0:
            raise BundleError(
                f"fingerprint images must be uint8 (N, C, H, W); got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        for name, tensor in (("labels", self.labels), ("source_indices", self.source_indices)):
            if tensor.dtype != torch.int64 or tuple(tensor.shape) != (n,):
                raise BundleError(
                    f"fingerprint {name} must be int64 of shape ({n},); got {tensor.dtype} "
                    f"{tuple(tensor.shape)}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def x(self) -> torch.Tensor:
        """Float images in [0, 1]."""
        return to_unit(self.images)

    @property
    def contract(self) -> InputContract:
        """The target's input contract (:func:`bundle_contract`): what its deployed model takes."""
        return bundle_contract(self.manifest)


def load_key(key_file: Path | str | None = None, env: str = KEY_ENV) -> bytes | None:
    """The signing key from ``key_file`` (its bytes, surrounding whitespace removed) or the
    environment variable ``env``; None when neither is given."""
    if key_file is not None:
        key = Path(key_file).read_bytes().strip()
        if not key:
            raise BundleError(f"key file {key_file} is empty")
        return key
    value = os.environ.get(env)
    return value.encode() if value else None


def _signature(key: bytes, tensor_sha256: str, manifest: dict[str, Any]) -> str:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    message = f"{tensor_sha256}\n{canonical_json(unsigned)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def save_bundle(fingerprints: FingerprintSet, path: Path | str, key: bytes | None = None) -> Path:
    """Write ``fingerprints`` to the folder ``path`` atomically (signed when ``key`` is given).

    An existing folder is replaced only once the new bundle is completely written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(
            {
                "images": fingerprints.images.contiguous(),
                "labels": fingerprints.labels.contiguous(),
                "source_indices": fingerprints.source_indices.contiguous(),
            },
            str(tmp / TENSOR_FILE),
        )
        digest = sha256_file(tmp / TENSOR_FILE)
        manifest = {
            **{k: v for k, v in fingerprints.manifest.items() if k != "signature"},
            "bundle_version": BUNDLE_VERSION,
            "count": len(fingerprints),
            "tensors_sha256": digest,
        }
        if key is not None:
            value = _signature(key, digest, manifest)
            manifest["signature"] = {"algorithm": "hmac-sha256", "value": value}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, allow_nan=False))
        tmp.chmod(0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_bundle(
    path: Path | str, key: bytes | None = None, require_signature: bool = False
) -> FingerprintSet:
    """Load the bundle at ``path`` after checking its hash and, where it applies, signature.

    Fails closed: a signed bundle needs the key to be loaded, a key given for an unsigned bundle
    is an error, and ``require_signature`` refuses unsigned bundles.
    """
    path = Path(path)
    manifest_path, tensor_path = path / MANIFEST_FILE, path / TENSOR_FILE
    for file in (manifest_path, tensor_path):
        if not file.is_file():
            raise BundleError(f"{file}: not found; {path} is not a complete fingerprint bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or "tensors_sha256" not in manifest:
        raise BundleError(f"{manifest_path}: not a fingerprint manifest (no tensors_sha256)")
    digest = sha256_file(tensor_path)
    if digest != manifest["tensors_sha256"]:
        raise BundleError(
            f"hash check failed: {tensor_path} changed after it was written (sha256 "
            f"{digest[:16]}…, manifest says {str(manifest['tensors_sha256'])[:16]}…)"
        )
    _check_signature(manifest_path, manifest, digest, key, require_signature)
    tensors = load_file(str(tensor_path))
    missing = {"images", "labels", "source_indices"} - set(tensors)
    if missing:
        raise BundleError(f"{tensor_path}: missing tensors {sorted(missing)}")
    fingerprints = FingerprintSet(
        tensors["images"], tensors["labels"], tensors["source_indices"], manifest
    )
    if manifest.get("count") != len(fingerprints):
        raise BundleError(
            f"{manifest_path}: says {manifest.get('count')} fingerprints, the tensors hold "
            f"{len(fingerprints)}"
        )
    return replace(fingerprints, manifest=manifest)


def _check_signature(
    manifest_path: Path,
    manifest: dict[str, Any],
    digest: str,
    key: bytes | None,
    require_signature: bool,
) -> None:
    signature = manifest.get("signature")
    if signature is None:
        if key is not None or require_signature:
            raise BundleError(
                f"signature check failed: {manifest_path} is not signed, but a signed bundle "
                "was expected"
            )
        return
    if key is None:
        raise BundleError(
            f"{manifest_path} is signed: give the key (a key file, or {KEY_ENV}) to verify it"
        )
    expected = _signature(key, digest, manifest)
    value = signature.get("value", "") if isinstance(signature, dict) else ""
    if not hmac.compare_digest(expected, str(value)):
        raise BundleError(
            f"signature check failed: {manifest_path} or the tensors were changed after "
            "signing, or the key is not the one that signed it"
        )
