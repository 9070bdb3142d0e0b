"""Per-part seeded initialization: each weight draws from a generator of its own.

A model's parts are seeded from one draw of the global RNG, each by its name (embedding, layer i's
attention, layer i's expert e, ...), not by the order in which the global RNG happens to be consumed.
So a dense model and a Lory model built after the same ``seed_everything`` get the same embeddings,
attention and output weights, and Lory's expert 0 equals the dense FFN: through the dense warmup the
two are the same model, and a paired comparison (`lory replicate`) differs only by what the experts
learn. Where the FFN's shape changes how many numbers it draws, order-based drawing would have given
every layer after the first a different attention.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def derive_seed(base: int, *keys: object) -> int:
    """A 63-bit seed for the part named by ``keys`` under ``base`` (stable across runs and machines)."""
    digest = hashlib.blake2b(repr((base, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def normal_(tensor: Tensor, std: float, seed: int | None) -> Tensor:
    """``tensor`` ~ N(0, std^2) in place, from a generator seeded by ``seed`` on the tensor's device
    (``seed`` None: the global RNG; a meta tensor has no values to draw)."""
    if seed is None:
        return torch.nn.init.normal_(tensor, std=std)
    if tensor.device.type == "meta":
        return tensor
    gen = torch.Generator(device=tensor.device).manual_seed(seed)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=gen)


def model_seed() -> int:
    """One draw of the global RNG: the base every part's seed derives from."""
    return int(torch.randint(0, 2 ** 62, (), device="cpu").item())  # on CPU also under torch.device("meta")
