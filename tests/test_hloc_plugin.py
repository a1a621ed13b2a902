"""Registration into hloc.

hloc is not installable here (not on PyPI), so the test builds a minimal fake
``hloc`` package in ``tmp_path``: ``hloc.utils.base_model`` with ``BaseModel``
and ``dynamic_load`` written from the rules in the spec (hloc_interfaces.md
§2.6-2.7: classes kept only if their ``__module__`` is exactly
``hloc.matchers.<name>`` and they subclass ``BaseModel``; exactly one), and an
``hloc.match_dense`` with a ``confs`` dict.
"""

import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_hloc.preprocess import load_image

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


@pytest.fixture
def fake_hloc(tmp_path, monkeypatch):
    root = tmp_path / "hloc"
    (root / "matchers").mkdir(parents=True)
    (root / "utils").mkdir()
    (root / "__init__.py").write_text("")
    (root / "matchers" / "__init__.py").write_text("")
    (root / "utils" / "__init__.py").write_text("")
    (root / "utils" / "base_model.py").write_text(textwrap.dedent(BASE_MODEL))
    (root / "match_dense.py").write_text(
        'confs = {"loftr": {"output": "matches-loftr", "model": {"name": "loftr"}}}\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "hloc" or m.startswith("hloc.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "hloc" or m.startswith("hloc.")]:
        del sys.modules[name]


def test_register_and_run(fake_hloc, golden_weights, tmp_path):
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
    rng = np.random.default_rng(0)
    image = (rng.uniform(0, 255, (48, 64, 3))).astype(np.uint8)
    path = tmp_path / "im.png"
    Image.fromarray(image).save(path)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = model({"image0": x, "image1": x.flip(-1)})
    assert out["keypoints0"].shape == out["keypoints1"].shape
    assert out["keypoints0"].ndim == 2 and out["scores"].ndim == 1
    assert torch.all(out["scores"] >= 0.25)

    # same as our matcher on the same input, shifted to integer pixel centres
    net = model.net
    ref, _, _ = load_image(path, None)  # 64x48: no resize
    with torch.no_grad():
        pred = net({"image0": ref[None], "image1": ref.flip(-1)[None]})
    keep = pred["scores"] > 0.0
    keep &= pred["scores"] >= 0.25
    torch.testing.assert_close(
        out["keypoints0"], (pred["keypoints0"][keep] - 0.5).float(), atol=1e-3, rtol=0
    )

    # registering twice is harmless
    register()
    assert dynamic_load(hloc.matchers, "patch2pix") is Model


def test_register_without_hloc(monkeypatch):
    from p2p_hloc.hloc_plugin import register

    monkeypatch.setitem(sys.modules, "hloc", None)
    with pytest.raises(ImportError, match="Hierarchical-Localization"):
        register()
