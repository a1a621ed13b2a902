"""Where checkpoints live, and their download (started by the user only).

Files are looked up in ``$P2P_HLOC_HOME`` (default ``~/.cache/p2p_hloc``).
Nothing here runs implicitly: tests and pipelines only read local files; a
missing file raises :class:`WeightsNotFoundError` saying where to put it.
"""

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from tqdm import tqdm

logger = logging.getLogger("p2p_hloc")


@dataclass(frozen=True)
class WeightsFile:
    name: str
    urls: Tuple[str, ...]
    description: str
    sha256: Optional[str] = None  # not published by the authors; see verify()


_TUM = "https://vision.in.tum.de/webshare/u/zhouq/patch2pix/pretrained/"
_DRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="

OFFICIAL = {
    "patch2pix_pretrained.pth": WeightsFile(
        "patch2pix_pretrained.pth",
        (
            _DRIVE + "1ZbJIE0LcZ3Oti-h8zU72JRL7LryVxJOh",
            _TUM + "patch2pix_pretrained.pth",
        ),
        "Patch2Pix, trained on MegaDepth (the paper's model)",
    ),
    "ncn_ivd_5ep.pth": WeightsFile(
        "ncn_ivd_5ep.pth",
        (_DRIVE + "10GZ0x3CmObKzbAg1GKQhrkPeSLRpD4Rp", _TUM + "ncn_ivd_5ep.pth"),
        "adapted NCNet (coarse only), trained on IVD for 5 epochs",
    ),
}
DEFAULT = "patch2pix_pretrained.pth"


class WeightsNotFoundError(FileNotFoundError):
    """A checkpoint that is not on disk."""


def cache_dir() -> Path:
    """``$P2P_HLOC_HOME`` or ``~/.cache/p2p_hloc``."""
    return Path(os.environ.get("P2P_HLOC_HOME", Path.home() / ".cache" / "p2p_hloc"))


def _info(name: str) -> WeightsFile:
    if name not in OFFICIAL:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(OFFICIAL)}")
    return OFFICIAL[name]


def get_weights(name: str = DEFAULT, path: Optional[Union[str, Path]] = None) -> Path:
    """Path of a checkpoint: ``path`` if given, else ``cache_dir() / name``.

    Raises:
        WeightsNotFoundError: with the download command and the folder to use.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
        return path
    target = cache_dir() / name
    if target.is_file():
        return target
    info = _info(name)
    raise WeightsNotFoundError(
        f"{name} ({info.description}) is not in {cache_dir()}.\n"
        f"  Download it with:  p2p-hloc weights download {name}\n"
        f"  or fetch it from {info.urls[0]}\n"
        f"  or {info.urls[1]}\n"
        f"  and place it at {target} (or set P2P_HLOC_HOME, or pass --weights PATH)."
    )


def resolve(name_or_path: Union[str, Path]) -> Path:
    """An official checkpoint's name (looked up in the cache) or a file path."""
    if str(name_or_path) in OFFICIAL:
        return get_weights(str(name_or_path))
    return get_weights(path=name_or_path)


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, sha256: Optional[str] = None) -> str:
    """Check a downloaded checkpoint: the expected SHA-256 when one is known,
    and in every case that it loads as a Patch2Pix/NCNet checkpoint whose keys
    fit the model. Returns the file's SHA-256."""
    from .model.checkpoint import load_model

    digest = sha256sum(path)
    if sha256 is not None and digest != sha256.lower():
        raise ValueError(
            f"{path}: SHA-256 {digest} does not match the expected {sha256}"
        )
    load_model(path, "cpu")
    return digest


def _fetch(url: str, dest: Path) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "p2p_hloc"})
    with urllib.request.urlopen(req, timeout=60) as r:
        if "text/html" in r.headers.get("Content-Type", ""):
            raise OSError(f"{url} answered with a web page, not the file")
        total = int(r.headers.get("Content-Length", 0)) or None
        with open(dest, "wb") as f, tqdm(
            total=total, unit="B", unit_scale=True, desc=dest.name.replace(".part", "")
        ) as bar:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))


def download(
    name: str = DEFAULT, sha256: Optional[str] = None, force: bool = False
) -> Path:
    """Download an official checkpoint into ``cache_dir()`` (tries each
    official URL in turn), verify it, and move it in place atomically."""
    info = _info(name)
    target = cache_dir() / name
    if target.is_file() and not force:
        logger.info("%s is already at %s", name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(name + ".part")
    errors = []
    for url in info.urls:
        try:
            logger.info("Downloading %s from %s", name, url)
            _fetch(url, part)
            digest = verify(part, sha256 or info.sha256)
            part.replace(target)
            (target.parent / (name + ".sha256")).write_text(f"{digest}  {name}\n")
            logger.info("Saved %s (sha256 %s)", target, digest)
            return target
        except Exception as e:  # try the next mirror, report all at the end
            errors.append(f"{url}: {e}")
            part.unlink(missing_ok=True)
    raise WeightsNotFoundError(
        f"could not download {name}:\n  "
        + "\n  ".join(errors)
        + f"\nPlace the file at {target} by hand."
    )
