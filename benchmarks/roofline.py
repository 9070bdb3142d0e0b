"""The floor under a training step: the FLOPs it must compute and the device-memory bytes it must
move, from the shapes alone, and the time each implies at the chip's peak.

FLOPs are the model's training FLOPs (model/config.py's count, the one ThroughputMonitor uses).
Bytes are a stated model, not a measurement; it counts what every implementation must move and
what the torch path moves on top:

- parameters P, fp32: read in forward and in backward, the gradient written, and a fused AdamW
  update reading the parameter, gradient and both moments and writing three of them: 10 x 4 bytes
  per parameter;
- activations, in the compute dtype: per token and layer 7d + 3f values (the attention's input,
  q, k, v, output and its projection's input, the FFN's input, both pre-activations and the
  product), each written, read by the next operation, read again in backward, its gradient written
  and read: 5 passes;
- the logits, fp32 (the loss upcasts them): written, read by the loss, the gradient written and
  read: 4 passes of V values per token;
- the torch Lory path only: every segment's three merged matrices (3 d f values in the compute
  dtype) are written by the merge and read by the matmul in forward, again in backward (merge
  recomputed), and the segment's weight gradient (3 d f) is written and read by the expert
  reduction: 6 passes of 3 d f per segment and layer. The fused kernels form both on chip.

Expert tiles re-read from cache by the fused kernels are not device-memory traffic (the kernels
schedule the programs that share a tile together); if they miss the cache, the measured step shows
it against this floor.
"""

from __future__ import annotations

from lory_lightning.model import ModelConfig
from lory_lightning.model.config import training_flops_per_token

# datasheet peaks: dense bf16 tensor-core FLOP/s (no sparsity) and HBM bytes/s
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}


def parameters(cfg: ModelConfig) -> int:
    """The model's parameter count, from its shapes (every FFN kind through its own module)."""
    from lory_lightning.model import LoryTransformer
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in LoryTransformer(cfg).parameters())


def step_flops(cfg: ModelConfig, batch: int) -> float:
    return training_flops_per_token(cfg) * batch * cfg.seq_len


def step_bytes(cfg: ModelConfig, batch: int, kernel: str, compute_bytes: int = 2) -> dict[str, float]:
    """The bytes a training step of ``batch`` sequences moves through device memory, by part."""
    tokens = batch * cfg.seq_len
    d, f = cfg.dim, cfg.hidden_dim
    parts = {
        "parameters": 10 * 4 * parameters(cfg),
        "activations": 5 * tokens * cfg.n_layer * (7 * d + 3 * f) * compute_bytes,
        "logits": 4 * tokens * cfg.vocab_size * 4,
        "merged": 0.0,
    }
    if cfg.ffn == "lory" and kernel == "torch":
        segments = tokens // cfg.segment_len
        parts["merged"] = 6 * segments * cfg.n_layer * 3 * d * f * compute_bytes
    return parts


def floor_seconds(flops: float, nbytes: float, peak_flops: float, peak_bytes: float) -> float:
    """The roofline: a step takes at least its FLOPs at peak compute and its bytes at peak bandwidth."""
    return max(flops / peak_flops, nbytes / peak_bytes)
