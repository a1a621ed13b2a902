import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_golden() -> Path:
    """The golden folder: ``$P2P_GOLDEN`` or ``../shared/golden`` beside the repo."""
    env = os.environ.get("P2P_GOLDEN")
    return Path(env) if env else REPO.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = find_golden()
    if not (path / "patch2pix_random_fp16.pth").is_file():
        reason = f"golden data not found at {path} (set P2P_GOLDEN)"
        if os.environ.get("P2P_REQUIRE_GOLDEN"):  # set by .ci/run
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def golden_weights(golden_dir) -> Path:
    return golden_dir / "patch2pix_random_fp16.pth"


@pytest.fixture(scope="session")
def golden_model(golden_weights):
    from p2p_hloc import load_model

    return load_model(golden_weights, "cpu")


@pytest.fixture
def logs(caplog, monkeypatch):
    """caplog for the 'p2p_hloc' logger (which does not propagate), at INFO."""
    monkeypatch.setattr(logging.getLogger("p2p_hloc"), "propagate", True)
    caplog.set_level(logging.INFO, "p2p_hloc")
    return caplog
