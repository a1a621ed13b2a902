"""The one place that touches private torch details, and the switch of the
fast CPU forms.

The model's fast forms (oneDNN's linear kernel for ``a @ b.T``, the folded
regressor convs with their ``CellShare`` and Winograd parts) are taken only
where they are exact to float32 rounding and faster: on the CPU, float32,
eval mode, no gradient wanted. ``fast_forms(False)`` turns them off (the
plain torch layers everywhere, e.g. to compare or to debug); the switch is
process-wide.
"""

import contextlib
import itertools
from typing import Iterable, Iterator, Tuple

import torch
from torch import nn

_enabled = True


def fast_forms_enabled() -> bool:
    """Whether the fast forms may be taken (``fast_forms`` switches them)."""
    return _enabled


@contextlib.contextmanager
def fast_forms(enabled: bool) -> Iterator[None]:
    """Context manager that enables or disables the fast CPU forms
    (process-wide), restoring the previous setting on exit."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def _wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def cpu_float32(x: torch.Tensor) -> bool:
    """Fast forms on: ``x`` is a float32 CPU tensor."""
    return _enabled and x.device.type == "cpu" and x.dtype == torch.float32


def use_fast_forms(module: nn.Module, x: torch.Tensor) -> bool:
    """The fast forms for ``module`` on input ``x``: enabled, float32 CPU
    input, eval mode and no gradient wanted for the parameters (they are not
    differentiable)."""
    return (
        cpu_float32(x) and not module.training and not _wants_grad(*module.parameters())
    )


def _onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    )


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for ``(M, K)`` and ``(N, K)`` -> ``(M, N)``.

    float32 on CPU goes through oneDNN's linear kernel: on AMD CPUs MKL's
    ``sgemm`` (behind ``torch.mm``) takes a slow path and reaches less than half
    of oneDNN's rate. Elsewhere, when gradients are needed (the oneDNN op has
    no autograd formula) or with the fast forms off, this is ``torch.mm``.
    """
    if cpu_float32(a) and b.dtype == a.dtype and not _wants_grad(a, b):
        if _onednn_linear():
            return torch.ops.mkldnn._linear_pointwise(
                a.contiguous(), b.contiguous(), None, "none", [], ""
            )
    return torch.mm(a, b.t())


def version_key(module: nn.Module) -> Tuple[Tuple[int, int], ...]:
    """A key that changes whenever a parameter or buffer of ``module`` is
    replaced or modified in place (an optimizer step, ``load_state_dict``):
    the storages and their version counters."""
    tensors: Iterable[torch.Tensor] = itertools.chain(
        module.parameters(), module.buffers()
    )
    return tuple((t.data_ptr(), t._version) for t in tensors)
