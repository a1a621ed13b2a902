"""Modules that need no model import without torch (a fresh interpreter each)."""

import subprocess
import sys

import pytest

LIGHT = [
    "p2p_hloc",
    "p2p_hloc.io",
    "p2p_hloc.io.lock",
    "p2p_hloc.quantize",
    "p2p_hloc.console",
    "p2p_hloc.preprocess",
    "p2p_hloc.triangulation",
    "p2p_hloc.localize_sfm",
    "p2p_hloc.localize_inloc",
    "p2p_hloc.colmap_from_nvm",
    "p2p_hloc.reconstruction",
    "p2p_hloc.match_dense",
    "p2p_hloc.pairs_from_covisibility",
    "p2p_hloc.visualize",
    "p2p_hloc.synthetic",
    "p2p_hloc.synthetic_layouts",
    "p2p_hloc.eval.poses",
    "p2p_hloc.eval.hpatches",
]


@pytest.mark.parametrize("module", LIGHT)
def test_imports_without_torch(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'p2p_hloc.model') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == "", f"{module} imports {r.stdout.strip()}"


def test_lazy_names():
    code = (
        "import sys, p2p_hloc\n"
        "assert 'torch' not in sys.modules\n"
        "from p2p_hloc import Patch2Pix, load_model, tune_malloc\n"
        "from p2p_hloc.model import Patch2Pix as P\n"
        "assert Patch2Pix is P and callable(load_model) and callable(tune_malloc)\n"
        "assert 'Patch2Pix' in dir(p2p_hloc)\n"
        "try:\n"
        "    p2p_hloc.nope\n"
        "except AttributeError as e:\n"
        "    assert 'nope' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
