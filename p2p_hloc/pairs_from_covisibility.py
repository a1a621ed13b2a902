"""Pairs of the most covisible images of a COLMAP model (hloc's
``pairs_from_covisibility``, same signature and output, read with pycolmap).

For every registered image, the other images that observe its 3D points are
ranked by the number of points they share (ties: smaller image id first) and
the first ``num_matched`` become pairs ``image other``.
"""

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import List, Tuple

import pycolmap
from tqdm import tqdm

from .console import run_cli
from .io import read_model, write_pairs

logger = logging.getLogger("p2p_hloc")


def covisible_pairs(
    reconstruction: pycolmap.Reconstruction, num_matched: int
) -> List[Tuple[str, str]]:
    """``(name, other name)`` for each image and its ``num_matched`` most
    covisible images, in image-id order then by decreasing covisibility."""
    pairs = []
    images = reconstruction.images
    for image_id in tqdm(sorted(images), desc="covisibility"):
        counts: Counter = Counter()
        for p in images[image_id].points2D:
            if p.has_point3D():
                track = reconstruction.points3D[p.point3D_id].track
                counts.update(
                    {e.image_id for e in track.elements if e.image_id != image_id}
                )
        if not counts:
            logger.info("Image %s has no covisible image.", images[image_id].name)
            continue
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        pairs += [(images[image_id].name, images[i].name) for i, _ in ranked][
            :num_matched
        ]
    return pairs


def main(model: Path, output: Path, num_matched: int) -> Path:
    """Write the covisibility pairs of the COLMAP model in ``model`` to
    ``output`` (hloc's pairs format) and return it."""
    if not Path(model).is_dir():
        raise FileNotFoundError(f"COLMAP model not found: {model}")
    pairs = covisible_pairs(read_model(model), num_matched)
    logger.info("Found %d pairs.", len(pairs))
    return write_pairs(Path(output), pairs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m p2p_hloc.pairs_from_covisibility",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--num_matched", type=int, required=True)
    return p


if __name__ == "__main__":
    sys.exit(run_cli(parser(), lambda args: main(**vars(args))))
