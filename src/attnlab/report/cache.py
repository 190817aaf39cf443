"""On-disk cache of finished claims, so `attnlab reproduce` resumes after a kill.

A finished claim is stored under a key made of the claim's name, the run settings that change
what it measures (quick or default size, seed), the code version (attnlab's version plus a hash
of every source file of the package, so any edit invalidates every entry) and a hash of the data
files the claim declares it reads. A check that raised is never cached: a re-run tries it again.

Each entry is a folder `<cache>/<claim>-<key>/` holding `result.json` and copies of the claim's
figures (another run into the same report folder may overwrite the figures there). Entries are
written to a temporary folder and renamed into place, so a kill never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from attnlab.report.claims import Claim, ClaimResult

FORMAT = 1  # bump when the entry layout changes


@lru_cache(maxsize=1)
def package_source_hash() -> str:
    """sha256 over the path and content of every .py file of the attnlab package."""
    root = Path(__file__).resolve().parents[1]  # the attnlab package folder
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def code_version() -> str:
    from attnlab._version import __version__

    return f"{__version__}+src.{package_source_hash()[:16]}"


def _file_hash(path: Path) -> str:
    if not path.exists():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def claim_key(claim: Claim, settings: dict[str, Any]) -> str:
    """The cache key of `claim` run with `settings` (quick, seed) by this code, on these inputs."""
    material = {
        "format": FORMAT,
        "claim": claim.key,
        "settings": settings,
        "code": code_version(),
        "inputs": {str(p): _file_hash(Path(p)) for p in claim.inputs},
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class ClaimCache:
    """Finished claims of one report folder (or any folder given)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _entry(self, claim: Claim, key: str) -> Path:
        return self.root / f"{claim.key}-{key}"

    def load(self, claim: Claim, key: str, figures_dir: Path) -> ClaimResult | None:
        """The cached result, with its figures copied back into figures_dir; None on a miss.

        A damaged entry (unreadable JSON, a figure gone) counts as a miss and is removed."""
        entry = self._entry(claim, key)
        try:
            data = json.loads((entry / "result.json").read_text(encoding="utf-8"))
            if data.get("cache_key") != key:
                raise ValueError("key mismatch")
            for name in data["figures"]:
                if not (entry / name).is_file():
                    raise FileNotFoundError(name)
            result = ClaimResult(
                **{k: data[k] for k in ClaimResult.__dataclass_fields__ if k in data}
            )
        except FileNotFoundError:
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            return None
        except (OSError, ValueError, TypeError, KeyError):
            shutil.rmtree(entry, ignore_errors=True)
            return None
        figures_dir.mkdir(parents=True, exist_ok=True)
        for name in result.figures:
            shutil.copyfile(entry / name, figures_dir / name)
        result.cached = True
        return result

    def store(
        self,
        claim: Claim,
        key: str,
        result: ClaimResult,
        figures_dir: Path,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        """Save a finished result (never one whose check raised); True when it was saved.

        Older entries of the claim with the same `settings` (made by other code or inputs, so
        never read again) are removed."""
        if result.error is not None:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{claim.key}-", dir=self.root))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the report folder is not
            data = result.to_dict()
            data.pop("status", None)
            data["cached"] = False
            data["cache_key"] = key
            data["cache_settings"] = settings
            data["finished_at"] = result.finished_at or _now()
            for name in result.figures:
                shutil.copyfile(figures_dir / name, tmp / name)
            (tmp / "result.json").write_text(
                json.dumps(data, indent=2, default=str), encoding="utf-8"
            )
            entry = self._entry(claim, key)
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if settings is not None:
            self._prune(claim, keep=entry, settings=settings)
        return True

    def _prune(self, claim: Claim, keep: Path, settings: dict[str, Any]) -> None:
        for other in self.root.glob(f"{claim.key}-*"):
            if other == keep or not other.is_dir():
                continue
            try:
                old = json.loads((other / "result.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if old.get("key") == claim.key and old.get("cache_settings") == settings:
                shutil.rmtree(other, ignore_errors=True)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
