"""hloc's file formats: the only place that knows their layout and conventions."""

from .colmap import ModelError, read_model  # noqa: F401
from .h5 import (  # noqa: F401
    H5Error,
    find_pair,
    from_hloc_coords,
    get_keypoints,
    get_matches,
    get_raw_matches,
    list_h5_names,
    names_to_pair,
    to_hloc_coords,
    write_keypoints,
    write_matches,
)
from .raw import RawMatches, RawMatchesError  # noqa: F401
from .text import (  # noqa: F401
    PairsError,
    canonical_name,
    parse_pairs,
    parse_queries,
    parse_retrieval,
    write_pairs,
    write_poses,
)
