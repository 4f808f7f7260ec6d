"""The fingerprint bundle: round trips, the hash and signature checks, keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from misentry.fingerprint.bundle import (
    KEY_ENV,
    MANIFEST_FILE,
    TENSOR_FILE,
    BundleError,
    FingerprintSet,
    load_bundle,
    load_key,
    save_bundle,
)

KEY = b"correct horse battery staple"


def make_set(n: int = 6) -> FingerprintSet:
    gen = torch.Generator().manual_seed(0)
    return FingerprintSet(
        images=torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen),
        labels=torch.randint(0, 10, (n,), generator=gen),
        source_indices=torch.arange(n) * 3,
        manifest={"method": "natural", "profile": None, "params": {"eps": 0.1}, "seeds": [1]},
    )


@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip_is_exact(tmp_path: Path, key: bytes | None) -> None:
    original = make_set()
    save_bundle(original, tmp_path / "b", key)
    loaded = load_bundle(tmp_path / "b", key)
    assert torch.equal(loaded.images, original.images)
    assert torch.equal(loaded.labels, original.labels)
    assert torch.equal(loaded.source_indices, original.source_indices)
    for k, v in original.manifest.items():
        assert loaded.manifest[k] == v
    assert loaded.manifest["count"] == len(original)
    assert ("signature" in loaded.manifest) == (key is not None)
    assert torch.equal(loaded.x, original.images.float() / 255)


def test_changed_tensors_fail_the_hash_check(tmp_path: Path) -> None:
    save_bundle(make_set(), tmp_path / "b")
    file = tmp_path / "b" / TENSOR_FILE
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash check failed") as err:
        load_bundle(tmp_path / "b")
    assert TENSOR_FILE in str(err.value)


def test_changed_manifest_fails_the_signature_check(tmp_path: Path) -> None:
    save_bundle(make_set(), tmp_path / "b", KEY)
    manifest_path = tmp_path / "b" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["params"]["eps"] = 0.2
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature check failed"):
        load_bundle(tmp_path / "b", KEY)


def test_swapped_tensors_with_a_fixed_hash_fail_the_signature_check(tmp_path: Path) -> None:
    """An attacker who rewrites both the tensors and the manifest's hash still needs the key."""
    save_bundle(make_set(), tmp_path / "b", KEY)
    other = make_set()
    other = FingerprintSet(other.images, (other.labels + 1) % 10, other.source_indices)
    save_bundle(other, tmp_path / "forged")
    (tmp_path / "b" / TENSOR_FILE).write_bytes((tmp_path / "forged" / TENSOR_FILE).read_bytes())
    manifest_path = tmp_path / "b" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    forged = json.loads((tmp_path / "forged" / MANIFEST_FILE).read_text())
    manifest["tensors_sha256"] = forged["tensors_sha256"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature check failed"):
        load_bundle(tmp_path / "b", KEY)


def test_the_wrong_key_fails_and_a_signed_bundle_needs_a_key(tmp_path: Path) -> None:
    save_bundle(make_set(), tmp_path / "b", KEY)
    with pytest.raises(BundleError, match="signature check failed"):
        load_bundle(tmp_path / "b", b"another key")
    with pytest.raises(BundleError, match="is signed"):
        load_bundle(tmp_path / "b")


def test_unsigned_bundles_are_refused_when_a_signature_is_expected(tmp_path: Path) -> None:
    save_bundle(make_set(), tmp_path / "b")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(tmp_path / "b", KEY)
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(tmp_path / "b", require_signature=True)


def test_missing_files_and_bad_tensors_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=MANIFEST_FILE):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="uint8"):
        FingerprintSet(
            torch.zeros(2, 1, 8, 8),
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(2, dtype=torch.int64),
        )
    with pytest.raises(BundleError, match="labels"):
        FingerprintSet(
            torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
            torch.zeros(3, dtype=torch.int64),
            torch.zeros(2, dtype=torch.int64),
        )


def test_a_save_replaces_a_bundle_only_when_complete(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    save_bundle(make_set(), tmp_path / "b")

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("misentry.fingerprint.bundle.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(make_set(3), tmp_path / "b")
    assert len(load_bundle(tmp_path / "b")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_keys_come_from_a_file_or_the_environment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert load_key() is None
    monkeypatch.setenv(KEY_ENV, "from-env")
    assert load_key() == b"from-env"
    (tmp_path / "key").write_bytes(b"from-file\n")
    assert load_key(tmp_path / "key") == b"from-file"
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(BundleError, match="empty"):
        load_key(tmp_path / "empty")


# --- statistics -------------------------------------------------------------------------------
