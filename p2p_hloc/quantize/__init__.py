"""From raw pair matches to shared per-image keypoints (no torch).

Dense matchers give each pair its own sub-pixel points; hloc needs one keypoint
list per image whose ids are shared by all its pairs. ``cluster_points`` merges
the raw points of one image (over all its pairs) that lie closer than
``radius`` px; ``assign_fixed`` snaps points to keypoints that must not move
(localization mode); ``unique_matches`` makes a pair one-to-one by score.

``cluster_points`` is deterministic and does not depend on the order of its
input: seeds are taken by decreasing density (summed score of the neighbours
closer than ``radius``), ties broken by coordinates; each seed takes every
unassigned point closer than ``radius`` to it, and the keypoint is the mean of
its points. A cluster is therefore at most ``2 * radius`` wide, even on chains
of points that are pairwise close. Keypoints are sorted by x, then y.

``max_kps`` keeps the ``max_kps`` keypoints of each built image with the
largest summed score (ties to the smaller index), in their order; raw points
of the dropped ones get no keypoint (-1), before the pairs are made one-to-one.

``ImmatchQuantizer`` reproduces the Patch2Pix authors' version exactly
(image-matching-toolbox ``quantize_keypoints``): a running midpoint inside
48-px cells, dependent on the order of the pairs. It is offered for parity.

Entry points, all in hloc's convention (pixel centres at integers):

- ``quantize_pairs``: pairs and their raw matches in memory -> keypoints,
  ``matches0`` and the label of every raw match (``Quantized``);
- ``main`` / ``python -m p2p_hloc.quantize``: a raw folder (one ``.npz`` per
  pair, ``io.raw``) -> hloc's features and matches files, in memory bounded by
  the largest image (``step.write_phase``, which ``match_pairs`` runs too).
"""

from .core import (  # noqa: F401
    EDGE,
    ImmatchQuantizer,
    assign_fixed,
    build_image,
    clip_to_image,
    cluster_points,
    fixed_labels,
    pair_matches,
    top_keypoints,
    unique_matches,
    unique_pairs,
)
from .in_memory import Quantized, quantize_pairs  # noqa: F401
from .step import (  # noqa: F401
    DiskSpaceError,
    Summary,
    main,
    read_pending,
    write_phase,
)
