"""Which path a Lory layer runs: the fused Triton kernels (fused_gemm.py, fused_swiglu.py: the
merge of expert weights happens on chip, inside the GEMM that uses it) or the torch path
(merged_swiglu.py, the reference and the CPU path). ``model.kernel`` chooses (config.py). Triton
is optional (``pip install -e ".[gpu]"``; a CUDA build of torch brings its own) and is imported only
when the fused path runs, so an exported model loads without it."""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor

KERNELS = ("auto", "torch", "triton")

# Read once, as Triton itself reads TRITON_INTERPRET when it is imported (and so torch.compile sees
# constants, not an environment lookup it cannot trace).
TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_fused(kernel: str, x: Tensor) -> bool:
    """Whether a Lory layer with ``model.kernel`` = ``kernel`` runs the fused kernels on ``x``.

    auto: on CUDA when Triton imports, else the torch path. triton: always, or one line saying why
    it cannot (no Triton; a CPU tensor outside the interpreter). torch: never.
    """
    if kernel == "torch":
        return False
    if kernel == "auto":
        return x.is_cuda and TRITON
    if not TRITON:
        raise RuntimeError("model.kernel is triton but Triton is not installed: pip install -e \".[gpu]\" "
                           "(or set model.kernel: auto)")
    if not x.is_cuda and not INTERPRET:
        raise RuntimeError(f"model.kernel is triton but this run is on {x.device}: the kernels run on CUDA "
                           "devices (on the CPU only under TRITON_INTERPRET=1, for tests); set model.kernel: "
                           "auto or torch")
    return True


def merged_swiglu_fused(*args: Tensor) -> Tensor:
    """fused_swiglu.merged_swiglu_fused, imported on first use (it imports Triton)."""
    from .fused_swiglu import merged_swiglu_fused as fused
    return fused(*args)
