"""Small numeric helpers shared by the model's fast paths."""

import torch


def _onednn_linear_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    return (
        not grad  # the oneDNN op has no autograd formula
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for ``(M, K)`` and ``(N, K)`` -> ``(M, N)``.

    float32 on CPU goes through oneDNN's linear kernel: on AMD CPUs MKL's
    ``sgemm`` (behind ``torch.mm``) takes a slow path and reaches less than half
    of oneDNN's rate. Elsewhere, and when gradients are needed, this is
    ``torch.mm``.
    """
    if _onednn_linear_ok(a, b):
        return torch.ops.mkldnn._linear_pointwise(
            a.contiguous(), b.contiguous(), None, "none", [], ""
        )
    return torch.mm(a, b.t())
