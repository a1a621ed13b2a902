"""Process-wide settings that make CPU inference faster."""

import ctypes
import ctypes.util

from . import logger

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_malloc(threshold: int = 256 << 20) -> bool:
    """Let glibc keep freed blocks of up to ``threshold`` bytes for reuse.

    By default glibc serves every allocation above 32 MB with a fresh ``mmap``
    and unmaps it on free, so each large tensor (the NC volumes, the
    regressor batches, the backbone's first maps) is page-faulted and zeroed
    again by the kernel: about 15% of a 1024 px pair on CPU
    (docs/performance.md). Raising glibc's mmap and trim thresholds keeps
    those blocks in the heap. It changes no result, only where memory comes
    from; the peak RSS stays the same, but freed memory is returned to the
    system less eagerly. The project's command-line entry points call it;
    call it once when running the matcher from Python. Returns whether it
    took effect (False without glibc, e.g. on macOS or Windows).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    value = ctypes.c_int(min(threshold, 2**31 - 1))
    done = bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(
        mallopt(_M_TRIM_THRESHOLD, value)
    )
    logger.debug("glibc malloc thresholds set to %d bytes: %s", threshold, done)
    return done
