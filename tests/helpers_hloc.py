"""A minimal ``hloc`` package written into a folder, from the facts of
hloc_interfaces.md (hloc is not on PyPI): ``hloc.utils.base_model``
with ``BaseModel`` and ``dynamic_load`` (2.6-2.7: classes kept only if their
``__module__`` is exactly ``hloc.matchers.<name>`` and they subclass
``BaseModel``; exactly one); ``hloc.match_dense`` with ``confs`` and ``main``
(2.5: file-name rules, returns ``(features, matches)``) whose
``match_and_assign`` only records its call; ``hloc.triangulation.main`` (3.1)
writing two-view geometries without a configuration, as hloc does (UNDEFINED,
which pycolmap 4.x skips: section 10). The ``fake_hloc`` fixture
(conftest.py) makes it the importable ``hloc``.
"""

import textwrap
from pathlib import Path

BASE_MODEL = """
import inspect
from abc import ABCMeta, abstractmethod
from torch import nn


class BaseModel(nn.Module, metaclass=ABCMeta):
    default_conf = {}
    required_inputs = []

    def __init__(self, conf):
        super().__init__()
        self.conf = conf = {**self.default_conf, **conf}
        self.required_inputs = self.required_inputs
        self._init(conf)

    def forward(self, data):
        for key in self.required_inputs:
            assert key in data, key
        return self._forward(data)

    @abstractmethod
    def _init(self, conf):
        raise NotImplementedError

    @abstractmethod
    def _forward(self, data):
        raise NotImplementedError


def dynamic_load(root, model):
    module_path = f"{root.__name__}.{model}"
    module = __import__(module_path, fromlist=[""])
    classes = inspect.getmembers(module, inspect.isclass)
    classes = [c for c in classes if c[1].__module__ == module_path]
    classes = [c for c in classes if issubclass(c[1], BaseModel)]
    assert len(classes) == 1, classes
    return classes[0][1]
"""


MATCH_DENSE = """
from pathlib import Path

confs = {
    "loftr": {
        "output": "matches-loftr",
        "model": {"name": "loftr", "weights": "outdoor"},
        "preprocessing": {"grayscale": True, "resize_max": 1024, "dfactor": 8},
        "max_error": 1,
        "cell_size": 1,
    }
}
calls = []  # what hloc's own aggregation would have been asked to do


def match_and_assign(conf, pairs_path, image_dir, match_path, feature_path_q,
                     feature_paths_refs=[], max_kps=8192, overwrite=False):
    calls.append((conf["output"], match_path, feature_path_q, max_kps))


def main(conf, pairs, image_dir, export_dir=None, matches=None, features=None,
         features_ref=None, max_kps=8192, overwrite=False):
    if features is None:
        features = "feats_"
    if isinstance(features, Path):
        features_q = features
        if matches is None:
            raise ValueError("both features and matches as Path or as names")
    else:
        if export_dir is None:
            raise ValueError("an export_dir is needed")
        features_q = Path(export_dir, f"{features}{conf['output']}.h5")
        if matches is None:
            matches = Path(export_dir, f"{conf['output']}_{pairs.stem}.h5")
    if features_ref is None:
        features_ref = []
    elif isinstance(features_ref, Path):
        features_ref = [features_ref]
    match_and_assign(conf, pairs, image_dir, matches, features_q, features_ref,
                     max_kps, overwrite)
    return features_q, matches
"""

TRIANGULATION = """
import h5py
import numpy as np
import pycolmap


def names_to_pair(name0, name1):
    return name0.replace("/", "-") + "/" + name1.replace("/", "-")


def get_matches(path, name0, name1):
    with h5py.File(path, "r") as f:
        key, reverse = names_to_pair(name0, name1), False
        if key not in f:
            key, reverse = names_to_pair(name1, name0), True
        m = f[key]["matches0"][()]
    idx = np.where(m != -1)[0]
    pairs = np.stack([idx, m[idx]], -1)
    return np.flip(pairs, -1) if reverse else pairs


def main(sfm_dir, reference_model, image_dir, pairs, features, matches,
         skip_geometric_verification=False, estimate_two_view_geometries=False,
         min_match_score=None, verbose=False, mapper_options=None):
    sfm_dir.mkdir(parents=True, exist_ok=True)
    database = sfm_dir / "database.db"
    reference = pycolmap.Reconstruction(reference_model)
    database.unlink(missing_ok=True)
    with pycolmap.Database.open(database) as db:
        for camera in reference.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in reference.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in reference.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in reference.images.values():
            db.write_image(image, use_image_id=True)
        ids = {image.name: i for i, image in reference.images.items()}
        with h5py.File(features, "r") as f:
            for name, i in ids.items():
                db.write_keypoints(i, f[name]["keypoints"][()] + 0.5)
        done = set()
        for line in open(pairs).read().splitlines():
            name0, name1 = line.split()
            id0, id1 = ids[name0], ids[name1]
            if (id0, id1) in done or (id1, id0) in done:
                continue
            done.add((id0, id1))
            m = get_matches(matches, name0, name1).astype(np.uint32)
            db.write_matches(id0, id1, m)
            # hloc keeps the matches consistent with the poses; what matters
            # here is the geometry written without a configuration
            db.write_two_view_geometry(
                id0, id1, pycolmap.TwoViewGeometry(inlier_matches=m)
            )
    return pycolmap.triangulate_points(
        reference, database, image_dir, sfm_dir,
        options=pycolmap.IncrementalPipelineOptions(mapper_options or {}),
    )
"""


def write_fake_hloc(folder: Path) -> Path:
    """The package ``folder/hloc``; returns ``folder``."""
    root = folder / "hloc"
    (root / "matchers").mkdir(parents=True)
    (root / "utils").mkdir()
    (root / "__init__.py").write_text("")
    (root / "matchers" / "__init__.py").write_text("")
    (root / "utils" / "__init__.py").write_text("")
    (root / "utils" / "base_model.py").write_text(textwrap.dedent(BASE_MODEL))
    (root / "match_dense.py").write_text(textwrap.dedent(MATCH_DENSE))
    (root / "triangulation.py").write_text(textwrap.dedent(TRIANGULATION))
    return folder
