"""hloc_plugin in seconds: confs, dispatch, triangulation check and
registration on the minimal ``hloc`` (fixture ``fake_hloc``), and the hloc
model on a 64 x 64 crop of golden pair A, checked where the mutation run
(tools/mutation.py) found them untested."""

import sys

import numpy as np
import pycolmap
import pytest
import torch
from conftest import align_rows
from PIL import Image

from p2p_hloc import match_dense, triangulation
from p2p_hloc.confs import confs
from p2p_hloc.hloc_plugin import (
    check_triangulation,
    dispatch_match_dense,
    hloc_conf,
    hloc_main,
    is_ours,
    register,
)
from p2p_hloc.matchers.patch2pix import Matcher

OURS = ("patch2pix", "patch2pix_aachen", "patch2pix_inloc", "ncnet")


def test_hloc_conf_moves_min_score_into_the_model(monkeypatch):
    for name in OURS:
        conf = hloc_conf(name)
        assert conf["model"] == {
            **confs[name]["model"],
            "min_score": confs[name]["quantization"]["min_score"],
        }
        assert {k: v for k, v in conf.items() if k != "model"} == {
            k: v for k, v in confs[name].items() if k != "model"
        }
        assert "min_score" not in confs[name]["model"]  # ours stays as it was
    assert hloc_conf("patch2pix_aachen")["model"]["min_score"] == 0.25
    # a conf whose quantization has no score filter keeps every raw match
    no_filter = {**confs["patch2pix"], "quantization": {"method": "cluster"}}
    monkeypatch.setitem(confs, "no_filter", no_filter)
    assert hloc_conf("no_filter")["model"]["min_score"] == 0.0


def test_is_ours():
    assert all(is_ours(hloc_conf(name)) for name in OURS)
    assert not is_ours({"model": {"name": "patch2pix"}})  # hloc's own aggregation
    assert not is_ours({"model": {"name": "loftr"}, "quantization": {}})
    assert not is_ours({"output": "x", "quantization": {}})  # no model at all


def recorder(calls, name, result):
    def main(*args, **kwargs):
        calls.append((name, args, kwargs))
        return result

    return main


def test_dispatch_match_dense(monkeypatch):
    """Our confs go to p2p_hloc.match_dense.main, the others to hloc's own;
    both with the arguments as given, both returning what that main returns."""
    calls = []
    own = recorder(calls, "hloc", ("hloc features", "hloc matches"))
    monkeypatch.setattr(
        match_dense, "main", recorder(calls, "ours", ("features", "matches"))
    )
    main = dispatch_match_dense(own)
    assert main.__wrapped__ is own
    ours, other = hloc_conf("patch2pix_aachen"), {"model": {"name": "loftr"}}
    args, kwargs = ("pairs", "images", "out"), {"features": "f", "max_kps": None}
    assert main(ours, *args, **kwargs) == ("features", "matches")
    assert main(other, *args, **kwargs) == ("hloc features", "hloc matches")
    assert main(ours) == ("features", "matches")
    assert calls == [
        ("ours", (ours, *args), kwargs),
        ("hloc", (other, *args), kwargs),
        ("ours", (ours,), {}),
    ]


@pytest.mark.parametrize("points", [0, 1, None])
def test_check_triangulation(logs, points):
    """Only a model without any 3D point is logged as an error; whatever
    hloc's main returns is returned, its arguments passed on as given."""
    reconstruction, calls = None, []
    if points is not None:
        reconstruction = pycolmap.Reconstruction()
        for _ in range(points):
            reconstruction.add_point3D(
                np.zeros(3), pycolmap.Track(), np.zeros(3, np.uint8)
            )
    main = check_triangulation(recorder(calls, "hloc", reconstruction))
    assert main("sfm", "reference", verbose=True) is reconstruction
    assert calls == [("hloc", ("sfm", "reference"), {"verbose": True})]
    empty = "hloc.triangulation produced no 3D points" in logs.text
    assert empty == (points == 0)


def test_hloc_main_keeps_the_first_original():
    module = type(sys)("some_hloc_module")
    module.main = original = recorder([], "hloc", None)
    assert hloc_main(module) is original
    module.main = recorder([], "replacement", None)
    assert hloc_main(module) is original
    # documented: hloc's own main stays reachable on the module
    assert module._p2p_hloc_original_main is original


def test_register_puts_the_matcher_and_confs_in_place(fake_hloc):
    module = register()
    import hloc.matchers
    from hloc import match_dense as hloc_match_dense
    from hloc.utils.base_model import BaseModel, dynamic_load

    assert sys.modules["hloc.matchers.patch2pix"] is module
    assert hloc.matchers.patch2pix is module
    assert module.__name__ == "hloc.matchers.patch2pix"
    assert module.__doc__ == "Patch2Pix (p2p_hloc) as an hloc matcher."
    Model = dynamic_load(hloc.matchers, "patch2pix")
    assert Model is module.Patch2Pix and issubclass(Model, BaseModel)
    assert Model.__module__ == "hloc.matchers.patch2pix"
    assert Model.__qualname__ == Model.__name__ == "Patch2Pix"
    assert sorted(hloc_match_dense.confs) == sorted(("loftr",) + OURS)
    for name in OURS:
        assert hloc_match_dense.confs[name] == hloc_conf(name)

    # again, with other names: the same module and class, the confs added
    assert register(["patch2pix_aachen_immatch"]) is module
    assert dynamic_load(hloc.matchers, "patch2pix") is Model
    assert "patch2pix_aachen_immatch" in hloc_match_dense.confs


def test_register_dispatch_and_opt_ins(fake_hloc, logs):
    """Whatever the order of the calls: hloc's own main is wrapped (not a
    wrapper of a wrapper), and the opt-ins replace it or leave it alone."""
    import hloc.match_dense
    import hloc.triangulation

    dense, tri = hloc.match_dense.main, hloc.triangulation.main
    register()
    assert hloc.match_dense.main.__wrapped__ is dense  # our quantization
    assert hloc.triangulation.main.__wrapped__ is tri  # checked on pycolmap 4
    assert "pycolmap 4: hloc.triangulation writes" in logs.text
    assert "p2p_hloc.hloc_plugin.register(fix_triangulation=True)" in logs.text

    register(hloc_aggregation=True, fix_triangulation=True)
    assert hloc.match_dense.main is dense
    assert hloc.triangulation.main is triangulation.main
    register(fix_triangulation=False)
    assert hloc.match_dense.main.__wrapped__ is dense
    assert hloc.triangulation.main.__wrapped__ is tri
    register(hloc_aggregation=True)
    assert hloc.match_dense.main is dense
    assert hloc.triangulation.main.__wrapped__ is tri


@pytest.mark.parametrize("version", ["3.13.0", "4.0.0", "5.1.2"])
def test_register_by_pycolmap_version(fake_hloc, logs, monkeypatch, version):
    """hloc's triangulation is only wrapped (with a warning) from pycolmap 4."""
    monkeypatch.setattr(pycolmap, "__version__", version)
    import hloc.triangulation

    tri = hloc.triangulation.main
    register()
    major = int(version[0])
    warned = f"pycolmap {major}: hloc.triangulation writes" in logs.text
    assert warned == (major >= 4)
    if major >= 4:
        assert hloc.triangulation.main.__wrapped__ is tri
    else:
        assert hloc.triangulation.main is tri


def test_register_without_hloc(monkeypatch):
    monkeypatch.setitem(sys.modules, "hloc", None)
    with pytest.raises(ImportError) as info:
        register()
    assert str(info.value) == (
        "hloc is not installed (it is not on PyPI): git clone --recursive "
        "https://github.com/cvg/Hierarchical-Localization && "
        "python -m pip install -e Hierarchical-Localization"
    )
    assert isinstance(info.value.__cause__, ImportError)


@pytest.fixture(scope="module")
def crops(golden_dir, tmp_path_factory):
    """64 x 64 crops of golden pair A as files and as hloc feeds them:
    ``[1, 3, H, W]`` in [0, 1]."""
    folder = tmp_path_factory.mktemp("crops")
    paths, tensors = [], []
    for i in (1, 2):
        image = np.array(Image.open(golden_dir / f"pairA_{i}.png").convert("RGB"))
        crop = image[:64, :64]
        paths.append(folder / f"{i}.png")
        Image.fromarray(crop).save(paths[-1])
        tensors.append(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)
    return paths, tensors


def test_model_on_a_small_pair(fake_hloc, golden_weights, crops):
    """The hloc model's default conf; on the crops, with two threshold
    settings: p2p_hloc's own matcher output (same network) with
    ``score > threshold`` and ``score >= min_score``, both sides shifted by
    -0.5 to hloc's integer pixel centres; half a pixel off on either side
    fails."""
    register()
    import hloc.matchers
    from hloc.utils.base_model import dynamic_load

    Model = dynamic_load(hloc.matchers, "patch2pix")
    model = Model({"weights": str(golden_weights)})
    assert model.conf == {
        "weights": str(golden_weights),
        "threshold": 0.25,  # the authors' default
        "min_score": 0.0,
        "coarse_only": False,
    }
    assert Model.default_conf["weights"] == confs["patch2pix"]["model"]["weights"]
    assert not model.net.coarse_only
    assert not any(p.requires_grad for p in model.net.parameters())

    paths, (x0, x1) = crops
    matcher = Matcher(
        {"threshold": -1.0}, {"resize_max": 64, "dfactor": 16}, golden_weights
    )
    ref = matcher.match(*(matcher.extract(matcher.load(p)) for p in paths))
    scores = np.sort(ref["scores"])
    assert len(scores) >= 8 and len(np.unique(scores)) == len(scores)
    low, high = float(scores[2]), float(scores[-3])
    for threshold, min_score in [(low, high), (high, low)]:
        model.conf.update(threshold=threshold, min_score=min_score)
        # as hloc calls it, but with gradients on: no tensor may need them
        out = model({"image0": x0, "image1": x1})
        keep = (ref["scores"] > threshold) & (ref["scores"] >= min_score)
        assert 0 < keep.sum() < len(keep)
        assert out["keypoints0"].dtype == out["keypoints1"].dtype == torch.float32
        assert out["scores"].dtype == torch.float32
        want = np.concatenate(
            [
                ref["keypoints0"][keep] - 0.5,
                ref["keypoints1"][keep] - 0.5,
                ref["scores"][keep, None],
            ],
            1,
        )
        got = (
            torch.cat([out["keypoints0"], out["keypoints1"], out["scores"][:, None]], 1)
            .double()
            .numpy()
        )
        align_rows(got, want, max_missing=0)
        for shift in (
            [0.5, 0, 0, 0, 0],
            [0, 0, 0, -0.5, 0],
            [0, 0.5, 0, 0, 0],
            [0, 0, 0.5, 0, 0],
        ):
            with pytest.raises(AssertionError):
                align_rows(got + shift, want, max_missing=0)


def test_model_coarse_only_on_the_cpu(fake_hloc, golden_weights, monkeypatch):
    """The ncnet conf builds a coarse-only network, on the CPU even where a
    GPU is present (hloc moves the model to its device itself)."""
    register()
    import hloc.matchers
    from hloc.utils.base_model import dynamic_load

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    Model = dynamic_load(hloc.matchers, "patch2pix")
    conf = {**hloc_conf("ncnet")["model"], "weights": str(golden_weights)}
    model = Model(conf)
    assert model.net.coarse_only
    assert model.net.device == torch.device("cpu")
