"""tune_malloc: glibc's thresholds set where glibc is the C library."""

import platform

import pytest
import torch

from p2p_hloc import tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_tune_malloc_on_glibc():
    assert tune_malloc() is True
    assert tune_malloc(64 << 20) is True  # may be called again
    # large tensors still allocate, fill and free as before
    x = torch.ones(80 << 18)  # 80 MB
    assert x.sum().item() == 80 << 18
    del x


def test_tune_malloc_without_mallopt(monkeypatch):
    """A C library without ``mallopt`` (macOS, musl stubs aside): no effect."""
    from p2p_hloc import runtime

    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: object())
    assert tune_malloc() is False
