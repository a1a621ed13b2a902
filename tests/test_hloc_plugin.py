"""Registration into hloc.

hloc is not installable here (not on PyPI), so the tests build a minimal
``hloc`` package in ``tmp_path`` from the facts of hloc_interfaces.md:
``hloc.utils.base_model`` with ``BaseModel`` and ``dynamic_load`` (2.6-2.7:
classes kept only if their ``__module__`` is exactly ``hloc.matchers.<name>``
and they subclass ``BaseModel``; exactly one); ``hloc.match_dense`` with
``confs`` and ``main`` (2.5: file-name rules, returns ``(features, matches)``)
whose ``match_and_assign`` only records its call; ``hloc.triangulation.main``
(3.1) writing two-view geometries without a configuration, as hloc does
(UNDEFINED, which pycolmap 4.x skips: section 10).
"""

import shutil
import sys
import textwrap

import h5py
import numpy as np
import pycolmap
import pytest
import torch
from conftest import align_rows
from helpers_localization import sift_h5
from PIL import Image

from p2p_hloc import match_pairs, triangulation
from p2p_hloc.io import list_h5_names, write_pairs

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


@pytest.fixture
def fake_hloc(tmp_path, monkeypatch):
    root = tmp_path / "hloc"
    (root / "matchers").mkdir(parents=True)
    (root / "utils").mkdir()
    (root / "__init__.py").write_text("")
    (root / "matchers" / "__init__.py").write_text("")
    (root / "utils" / "__init__.py").write_text("")
    (root / "utils" / "base_model.py").write_text(textwrap.dedent(BASE_MODEL))
    (root / "match_dense.py").write_text(textwrap.dedent(MATCH_DENSE))
    (root / "triangulation.py").write_text(textwrap.dedent(TRIANGULATION))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "hloc" or m.startswith("hloc.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "hloc" or m.startswith("hloc.")]:
        del sys.modules[name]


def test_register_and_run(fake_hloc, golden_dir, golden_weights):
    """hloc's model contract on golden pair A at its own size (640 x 480,
    sides multiples of 16: no resize): the official matches, both sides
    shifted to hloc's integer pixel centres."""
    from p2p_hloc.hloc_plugin import register

    register()
    import hloc.matchers
    from hloc import match_dense
    from hloc.utils.base_model import dynamic_load

    assert {
        "loftr",
        "patch2pix",
        "patch2pix_aachen",
        "patch2pix_inloc",
        "ncnet",
    } <= set(match_dense.confs)
    conf = match_dense.confs["patch2pix_aachen"]
    assert conf["preprocessing"]["grayscale"] is False
    assert conf["preprocessing"]["dfactor"] == 16
    assert conf["model"]["min_score"] == 0.25
    Model = dynamic_load(hloc.matchers, conf["model"]["name"])
    model = Model({**conf["model"], "weights": str(golden_weights)}).eval()

    # what hloc feeds: [1, C, H, W] in [0, 1], sides multiples of dfactor
    images = [
        np.asarray(Image.open(golden_dir / f"pairA_{i}.png").convert("RGB"))
        for i in (1, 2)
    ]
    x0, x1 = (
        torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255 for im in images
    )
    with torch.no_grad():
        out = model({"image0": x0, "image1": x1})
    assert out["keypoints0"].shape == out["keypoints1"].shape
    assert out["keypoints0"].ndim == 2 and out["scores"].ndim == 1
    assert torch.all(out["scores"] >= 0.25)

    # the official matches (original pixels, corner convention; the golden
    # tests hold our own model to them) with score > 0.25
    golden = np.load(golden_dir / "outputs_A_default.npz")
    want = golden["final_thr025_matches"] - 0.5  # to hloc's integer centres
    assert len(want) > 300
    got = torch.cat([out["keypoints0"], out["keypoints1"]], 1).double().numpy()
    ip, _ = align_rows(got, want)
    assert len(ip) >= len(want) - 1
    # half a pixel on either side is far outside the tolerance
    for shift in ([0.5, 0, 0, 0], [0, 0, 0, -0.5], [0, 0.5, 0, 0], [0, 0, 0.5, 0]):
        with pytest.raises(AssertionError):
            align_rows(got + shift, want)

    # registering twice is harmless
    register()
    assert dynamic_load(hloc.matchers, "patch2pix") is Model


@pytest.fixture
def small_dataset(golden_dir, golden_weights, tmp_path):
    """Database images (golden pairs A and B), a query, mapping and loc pairs,
    and patch2pix_aachen with the golden weights at 160 px (small: the
    network runs 16 times)."""
    from p2p_hloc.hloc_plugin import hloc_conf

    images = tmp_path / "images"
    (images / "db").mkdir(parents=True)
    (images / "query").mkdir()
    shutil.copy(golden_dir / "pairA_1.png", images / "db/a.png")
    shutil.copy(golden_dir / "pairA_2.png", images / "db/b.png")
    shutil.copy(golden_dir / "pairB_1.png", images / "db/c.png")
    shutil.copy(golden_dir / "pairB_2.png", images / "query/q.png")
    db = ["db/a.png", "db/b.png", "db/c.png"]
    conf = hloc_conf("patch2pix_aachen")
    conf["model"]["weights"] = str(golden_weights)
    conf["preprocessing"] = {**conf["preprocessing"], "resize_max": 160}
    return dict(
        images=images,
        conf=conf,
        sfm_pairs=write_pairs(
            tmp_path / "pairs-db.txt", [(db[0], db[1]), (db[1], db[2])]
        ),
        loc_pairs=write_pairs(
            tmp_path / "pairs-loc.txt", [("query/q.png", n) for n in db[:2]]
        ),
    )


def h5_contents(path):
    """Every dataset of an h5 file by its full name."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda k, v: (
                out.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None
            )
        )
    return out


def assert_same_h5(a, b):
    a, b = h5_contents(a), h5_contents(b)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_both_passes_use_our_quantization(fake_hloc, small_dataset, tmp_path):
    """hloc.match_dense.main with our conf, called as hloc's scripts call it
    (mapping; then localization with the mapping files and max_kps=None):
    the files are exactly those match_pairs writes for the same pairs, the
    database keypoints do not move in the second pass, and hloc's own
    aggregation is never reached."""
    from p2p_hloc.hloc_plugin import register

    register()
    from hloc import match_dense

    d, out = small_dataset, tmp_path / "hloc_outputs"
    features, sfm_matches = match_dense.main(
        d["conf"], d["sfm_pairs"], d["images"], out, max_kps=8192
    )
    assert features == out / f"feats_{d['conf']['output']}.h5"
    assert sfm_matches == out / f"{d['conf']['output']}_pairs-db.h5"
    ref = tmp_path / "match_pairs"
    ref_features, ref_matches = match_pairs.main(
        d["conf"], d["sfm_pairs"], d["images"], ref, max_kps=8192
    )
    assert_same_h5(features, ref_features)
    assert_same_h5(sfm_matches, ref_matches)
    mapping = h5_contents(features)

    result = match_dense.main(
        d["conf"],
        d["loc_pairs"],
        d["images"],
        out,
        features=features,
        max_kps=None,
        matches=sfm_matches,
    )
    assert result == (features, sfm_matches)
    match_pairs.main(
        d["conf"],
        d["loc_pairs"],
        d["images"],
        ref,
        features=ref_features,
        matches=ref_matches,
    )
    assert_same_h5(features, ref_features)
    assert_same_h5(sfm_matches, ref_matches)
    after = h5_contents(features)
    for name in ("db/a.png", "db/b.png", "db/c.png"):
        np.testing.assert_array_equal(
            after[f"{name}/keypoints"], mapping[f"{name}/keypoints"]
        )
    assert len(after["query/q.png/keypoints"]) > 10
    assert match_dense.calls == []


def test_other_confs_and_the_opt_in_keep_hlocs_code(fake_hloc, tmp_path):
    from p2p_hloc.hloc_plugin import register

    register()
    from hloc import match_dense

    pairs = tmp_path / "pairs-x.txt"
    result = match_dense.main(match_dense.confs["loftr"], pairs, tmp_path, tmp_path)
    assert result == (
        tmp_path / "feats_matches-loftr.h5",
        tmp_path / "matches-loftr_pairs-x.h5",
    )
    assert match_dense.calls == [("matches-loftr", result[1], result[0], 8192)]

    register(hloc_aggregation=True)  # hloc's grid for Patch2Pix matches
    conf = match_dense.confs["patch2pix"]
    features, matches = match_dense.main(conf, pairs, tmp_path, tmp_path, max_kps=None)
    assert match_dense.calls[-1] == (conf["output"], matches, features, None)


def test_triangulation_on_pycolmap_4(fake_hloc, aachen_v1_1_layout, tmp_path, logs):
    """hloc's triangulation gives no 3D point on pycolmap 4.x without an
    error: register() says so, logs the empty model as an error and, opted
    in, puts p2p_hloc.triangulation in its place."""
    from p2p_hloc.hloc_plugin import register

    dataset = aachen_v1_1_layout["dataset"]
    images, pairs = dataset / "images_upright", tmp_path / "pairs.txt"
    shutil.copy(aachen_v1_1_layout["pairs"] / "pairs-db-covis20.txt", pairs)
    features, matches = sift_h5(
        images, [pairs], tmp_path / "feats.h5", tmp_path / "matches.h5"
    )
    args = (dataset / "3D-models/aachen_v_1_1", images, pairs, features, matches)
    register()
    import hloc.triangulation

    assert "p2p_hloc.triangulation" in logs.text
    rec = hloc.triangulation.main(tmp_path / "hloc_sfm", *args)
    assert rec.num_points3D() == 0
    assert "hloc.triangulation produced no 3D points" in logs.text

    register(fix_triangulation=True)
    assert hloc.triangulation.main is triangulation.main
    rec = hloc.triangulation.main(tmp_path / "fixed_sfm", *args)
    assert rec.num_points3D() > 200


def test_register_without_hloc(monkeypatch):
    from p2p_hloc.hloc_plugin import register

    monkeypatch.setitem(sys.modules, "hloc", None)
    with pytest.raises(ImportError, match="Hierarchical-Localization"):
        register()
