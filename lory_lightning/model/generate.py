"""Sampling from a Lory model with prompt-only (default) or segment routing (LORY.md section 2)."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig
from .moe import RoutingMode
from .transformer import LoryTransformer


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V). temperature 0 means greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def kv_cache_bytes(config: ModelConfig, batch: int, length: int, dtype: torch.dtype) -> int:
    """Bytes of the keys and values ``new_cache`` allocates for ``batch`` sequences of ``length``."""
    return 2 * config.n_layer * batch * config.kv_heads * length * config.head_dim * dtype.itemsize


def available_memory_bytes() -> int | None:
    """Memory a new allocation can take on this machine (Linux's MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@torch.no_grad()
def generate(model: LoryTransformer, prompt_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, routing: RoutingMode = "prompt", eos_id: int | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Continue a batch of equal-length prompts (B, P): returns (B, P + n), n <= max_new_tokens.

    prompt routing merges each layer's FFN once from the prompt and decodes at a dense model's cost;
    segment routing repeats the training computation (a new merge every segment_len positions).
    With ``eos_id`` a finished sequence is padded with eos until all are finished.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (batch, length) with length >= 1, got {tuple(prompt_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    B, P = prompt_ids.shape
    cache = model.new_cache(B, P + max_new_tokens, routing)
    out = [prompt_ids]
    logits = model.step(prompt_ids, cache)[:, -1]  # (B, V)
    done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    for i in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, generator)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        out.append(token[:, None])
        if i + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
            break
        logits = model.step(token[:, None], cache)[:, -1]
    model.train(was_training)
    return torch.cat(out, dim=1)
