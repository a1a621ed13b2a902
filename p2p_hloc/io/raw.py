"""Raw pair matches stored as they are computed: one small ``.npz`` per pair,
written to a temporary name and renamed, so a killed run leaves only complete
pairs (and maybe a stray ``.tmp``, ignored and overwritten)."""

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np


class RawMatchesError(RuntimeError):
    """A raw-match file that is corrupt or does not hold the expected pair."""


class RawMatches:
    """``root/ab/abcdef....npz`` per ordered pair ``(name0, name1)`` holding
    ``keypoints0``, ``keypoints1`` (corner convention), ``scores``, ``size0``,
    ``size1`` and the two names."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, name0: str, name1: str) -> Path:
        h = hashlib.sha1(f"{name0}\0{name1}".encode()).hexdigest()
        return self.root / h[:2] / f"{h}.npz"

    def find(self, name0: str, name1: str) -> Optional[Tuple[str, str]]:
        """The stored orientation of a pair, or ``None``."""
        for pair in ((name0, name1), (name1, name0)):
            if self.path(*pair).is_file():
                return pair
        return None

    def write(self, name0: str, name1: str, data: Dict[str, np.ndarray]) -> None:
        path = self.path(name0, name1)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, name0=name0, name1=name1, **data)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def read(self, name0: str, name1: str) -> Dict[str, np.ndarray]:
        path = self.path(name0, name1)
        try:
            with np.load(path) as f:
                data = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise RawMatchesError(
                f"corrupt raw-match file {path} for pair ({name0}, {name1}): {e}; "
                "delete it to recompute the pair"
            ) from e
        if (str(data.get("name0")), str(data.get("name1"))) != (name0, name1):
            raise RawMatchesError(f"{path} does not hold the pair ({name0}, {name1})")
        return data

    def mark_pending(self, names, pairs) -> None:
        """Record the images whose keypoints the final write is about to add
        and the pairs it adds, so that a run killed between the two renames
        rebuilds those images."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "pending.json.tmp"
        tmp.write_text(json.dumps({"names": sorted(names), "pairs": list(pairs)}))
        os.replace(tmp, self.root / "pending.json")

    def pending(self) -> Tuple[set, set]:
        """Images and pairs recorded by ``mark_pending`` (empty when none)."""
        path = self.root / "pending.json"
        if not path.is_file():
            return set(), set()
        try:
            data = json.loads(path.read_text())
            return set(data["names"]), {(p[0], p[1]) for p in data["pairs"]}
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise RawMatchesError(
                f"corrupt {path} ({type(e).__name__}: {e}); it lists what a run "
                "stopped while writing its outputs was adding: delete it to resume "
                "(the keypoints that run already wrote are then kept as they are)"
            ) from e

    def meta(self) -> Optional[dict]:
        """What produced the stored matches (``set_meta``), or ``None``."""
        path = self.root / "meta.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise RawMatchesError(
                f"corrupt {path} ({e}); delete the folder {self.root} to recompute "
                "its pairs"
            ) from e

    def set_meta(self, meta: dict) -> None:
        """Record what produces the stored matches (JSON data), atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, self.root / "meta.json")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
