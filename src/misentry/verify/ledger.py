"""The ledger: which fingerprints each endpoint has already been shown, and when.

A fingerprint sent to a model is leaked to whoever runs it: they can log the query and tune a
tampered model to keep that fingerprint's label (the adaptive attack of the founding paper,
section 5.2). Fingerprints are independent of each other, so the unsent ones still catch such a
model; the ledger makes sure they are the ones used. It records, per endpoint id (a URL or a
name the user gives), every fingerprint index that was sent, the first and last time, and how
often; :meth:`Ledger.order` puts the unsent ones first.

What counts as shown: every image handed to the endpoint, whatever came back. A query that
timed out, failed or gave a malformed answer may still have reached the server and been logged,
so it is leaked all the same; only images never sent (a refused budget, a deadline that passed
before their batch) stay fresh. The verifier records them after the query, never before.

The file lives next to the bundle's files (``<bundle>/ledger.json`` by default, or any path) and
is outside what the bundle's hash and signature cover (``fingerprints.safetensors`` and
``manifest.json``), so writing it never invalidates the bundle. It is keyed by the bundle's
tensor hash, so one ledger file can serve several bundles and an entry can never be applied to
other fingerprints. Every write re-reads the file, merges, and replaces it atomically (temporary
file, fsync, ``os.replace``), so a crash leaves the old or the new ledger, never half of one.
Regenerating a bundle in place (``misentry fingerprint --force``) deletes the folder and with it
a ledger inside: keep the ledger elsewhere (``path``) when bundles are rebuilt with the same seed.

Format::

    {"ledger_version": 1,
     "bundles": {"<tensors_sha256>": {"count": 100, "endpoints": {"<endpoint id>": {
         "17": {"first": "2025-01-01T10:00:00+00:00", "last": "…", "times": 2}, …}}}}}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from misentry.atomic import write_text_atomic
from misentry.fingerprint.bundle import FingerprintSet

LEDGER_FILE = "ledger.json"
LEDGER_VERSION = 1


class LedgerError(ValueError):
    """A ledger file is unreadable, malformed, belongs elsewhere, or cannot be written."""


@dataclass(frozen=True)
class Showing:
    """When one fingerprint was shown to one endpoint: first and last time (ISO 8601, UTC) and
    how many verifications sent it."""

    first: str
    last: str
    times: int


Shown = dict[str, dict[int, Showing]]
"""Per endpoint id: fingerprint index -> :class:`Showing`."""


class Ledger:
    """The fingerprints of one bundle already shown, per endpoint, backed by a JSON file.

    Open it with :meth:`open`; nothing is written until :meth:`record`.
    """

    def __init__(self, path: Path, bundle_sha256: str, count: int, shown: Shown) -> None:
        self.path = path
        self.bundle_sha256 = bundle_sha256
        self.count = count
        self._shown = shown

    @staticmethod
    def default_path(bundle_dir: Path | str) -> Path:
        """``<bundle_dir>/ledger.json``."""
        return Path(bundle_dir) / LEDGER_FILE

    @classmethod
    def open(cls, path: Path | str, bundle: FingerprintSet) -> Ledger:
        """The ledger of ``bundle`` in the file ``path`` (empty when the file does not exist)."""
        digest = bundle.manifest.get("tensors_sha256")
        if not isinstance(digest, str) or not digest:
            raise LedgerError(
                "the fingerprints have no tensors_sha256 in their manifest; save the bundle "
                "(save_bundle) and load it (load_bundle) before keeping a ledger for it"
            )
        path = Path(path)
        section = _read(path).get("bundles", {}).get(digest)
        shown = _parse_section(path, section, len(bundle))
        return cls(path, digest, len(bundle), shown)

    def matches(self, bundle: FingerprintSet) -> bool:
        """Whether this ledger belongs to ``bundle`` (same tensor hash and size)."""
        digest = bundle.manifest.get("tensors_sha256")
        return digest == self.bundle_sha256 and len(bundle) == self.count

    def shown(self, endpoint: str) -> dict[int, Showing]:
        """The fingerprints already shown to ``endpoint`` (a copy)."""
        return dict(self._shown.get(endpoint, {}))

    def endpoints(self) -> list[str]:
        return sorted(self._shown)

    def fresh(self, endpoint: str) -> list[int]:
        """Indices never shown to ``endpoint``, ascending."""
        seen = self._shown.get(endpoint, {})
        return [i for i in range(self.count) if i not in seen]

    def order(self, endpoint: str, permutation: Sequence[int]) -> list[int]:
        """``permutation`` reordered, stably, so the safest fingerprints come first.

        First those never shown to any endpoint, then those shown only to other endpoints (they
        may have leaked there), then those shown to ``endpoint`` itself, least often first.
        """
        seen = self._shown.get(endpoint, {})
        elsewhere = {i for other, items in self._shown.items() if other != endpoint for i in items}

        def rank(index: int) -> tuple[int, int]:
            if index in seen:
                return 2, seen[index].times
            return (1 if index in elsewhere else 0), 0

        return sorted(permutation, key=rank)

    def check_writable(self) -> None:
        """Raise :class:`LedgerError` unless a ledger file can be written at :attr:`path`.

        The verifier calls this before any query, so a ledger it could not update never lets
        fingerprints go out unrecorded.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise LedgerError(
                f"ledger {self.path}: cannot write there ({err.strerror or err}); give another "
                "ledger path, or run without a ledger"
            ) from None

    def record(self, endpoint: str, indices: Iterable[int], when: datetime | None = None) -> None:
        """Mark ``indices`` as shown to ``endpoint`` at ``when`` (default now) and save.

        The file is re-read first, so showings another process recorded meanwhile are kept.
        """
        indices = sorted(set(indices))
        if not indices:
            return
        bad = [i for i in indices if not 0 <= i < self.count]
        if bad:
            raise LedgerError(f"fingerprint indices {bad} are outside [0, {self.count})")
        stamp = (when or datetime.now(UTC)).isoformat(timespec="seconds")
        data = _read(self.path)
        bundles = data.setdefault("bundles", {})
        shown = _parse_section(self.path, bundles.get(self.bundle_sha256), self.count)
        items = shown.setdefault(endpoint, {})
        for index in indices:
            before = items.get(index)
            items[index] = (
                Showing(stamp, stamp, 1)
                if before is None
                else replace(before, last=stamp, times=before.times + 1)
            )
        bundles[self.bundle_sha256] = _section_json(shown, self.count)
        data["ledger_version"] = LEDGER_VERSION
        _write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        self._shown = shown


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"ledger_version": LEDGER_VERSION, "bundles": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LedgerError(
            f"ledger {path}: cannot be read ({err}); restore it, or move it away to start a "
            "new ledger (every fingerprint then counts as fresh)"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("bundles", {}), dict):
        raise LedgerError(f"ledger {path}: not a misentry ledger (no 'bundles' object)")
    version = data.get("ledger_version")
    if version != LEDGER_VERSION:
        raise LedgerError(
            f"ledger {path}: version {version!r}, this misentry reads version {LEDGER_VERSION}"
        )
    return data


def _parse_section(path: Path, section: Any, count: int) -> Shown:
    if section is None:
        return {}
    where = f"ledger {path}"
    if not isinstance(section, dict) or not isinstance(section.get("endpoints"), dict):
        raise LedgerError(f"{where}: a bundle entry has no 'endpoints' object")
    if section.get("count") != count:
        raise LedgerError(
            f"{where}: the entry for this bundle says {section.get('count')} fingerprints, "
            f"the bundle holds {count}"
        )
    shown: Shown = {}
    for endpoint, items in section["endpoints"].items():
        if not isinstance(items, dict):
            raise LedgerError(f"{where}: endpoint {endpoint!r} holds no index table")
        shown[endpoint] = {
            _index(where, key, count): _showing(where, value) for key, value in items.items()
        }
    return shown


def _index(where: str, key: str, count: int) -> int:
    if not key.isdigit() or not 0 <= int(key) < count:
        raise LedgerError(f"{where}: fingerprint index {key!r} is not in [0, {count})")
    return int(key)


def _showing(where: str, value: Any) -> Showing:
    if not isinstance(value, dict):
        raise LedgerError(f"{where}: a showing must be an object, not {value!r}")
    first, last, times = value.get("first"), value.get("last"), value.get("times")
    if not (isinstance(first, str) and isinstance(last, str)):
        raise LedgerError(f"{where}: a showing needs 'first' and 'last' times, got {value!r}")
    if type(times) is not int or times < 1:
        raise LedgerError(f"{where}: 'times' must be a positive integer, got {value!r}")
    return Showing(first, last, times)


def _section_json(shown: Shown, count: int) -> dict[str, Any]:
    return {
        "count": count,
        "endpoints": {
            endpoint: {
                str(i): {"first": s.first, "last": s.last, "times": s.times}
                for i, s in sorted(items.items())
            }
            for endpoint, items in shown.items()
        },
    }


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new file, never a part."""
    try:
        write_text_atomic(path, text)
    except OSError as err:
        raise LedgerError(f"ledger {path}: cannot write ({err.strerror or err})") from None
