"""The FFN kinds a decoder block can hold: one table from ``model.ffn`` to class, and what each class keeps.

Adding a kind is one class that keeps the ``FFN`` protocol and one line in ``FFN_KINDS``: the config
validates against the table, the decoder builds from it, FLOPs and parameter counts ask the class,
and upcycling and the dense warmup read its two flags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from .baselines import AuxFreeTopKMoE, ExpertChoiceMoE, LoryPrefixMoE, SegmentExpertChoiceMoE, TopKMoE
from .moe import LoryMoE, Routing, RoutingMode, SwiGLU
from .remoe import ReMoE

if TYPE_CHECKING:
    from .config import ModelConfig


@runtime_checkable
class FFN(Protocol):
    """What a decoder block needs of its FFN.

    Class side: ``from_config`` builds one layer; ``check_config`` refuses configs the kind cannot
    train (beyond ModelConfig's own checks); ``flops_per_token`` is the training-forward FLOPs of one
    token (2 per multiply-add, router and merges included); ``routed`` says it has experts and a
    router (a routed kind's parameters are E experts plus an (E, d) router, as ``param_counts`` counts);
    ``has_dense_phase`` says it can train as the dense model first and upcycle in place;
    ``recomputed_flops_per_token`` is what backward computes again beyond twice the forward (Lory's
    merges with ``recompute_merge``), for the training FLOPs count; a routed kind's
    ``active_experts`` is how many experts one token is computed with (for the active parameters).

    Instance side, the inference protocol: ``forward_with_routing`` (teacher-forced, returns the
    layer's Routing or None), ``prefill`` (the prompt, returns the decoding state) and ``decode`` (one
    token at an absolute position, updating that state). ``lengths`` (B,) marks a padded batch whose
    rows start at position 0 (model/padding.py); ``pos`` is then (B,), each row's own position. A kind
    whose routing padding would change refuses it with a clear error (the Expert Choice baselines).
    """

    routed: ClassVar[bool]
    has_dense_phase: ClassVar[bool]

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> FFN: ...

    @staticmethod
    def check_config(cfg: ModelConfig) -> None: ...

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> float: ...

    @staticmethod
    def recomputed_flops_per_token(cfg: ModelConfig) -> float: ...

    def reset_parameters(self, std: float, out_std: float | None, router_std: float,
                         seed: int | None = None) -> None:
        """Draw the weights; with ``seed``, from generators seeded by it (model/init.py), so that
        models built after the same seed share what they have in common."""

    def forward_with_routing(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Routing | None]: ...

    def prefill(self, x: Tensor, mode: RoutingMode, lengths: Tensor | None = None) -> tuple[Tensor, Any]: ...

    def decode(self, x: Tensor, cache: Any, pos: int | Tensor) -> Tensor: ...


FFN_KINDS: dict[str, type[FFN]] = {
    "lory": LoryMoE,  # causal segment routing, experts merged per segment (LORY.md section 1)
    "dense": SwiGLU,  # the parameter-matched dense baseline, and what upcycling copies
    "lory_prefix": LoryPrefixMoE,  # one merge per sequence, from the first segment (LORY.md section 5)
    "expert_choice": ExpertChoiceMoE,  # token-level Expert Choice
    "segment_expert_choice": SegmentExpertChoiceMoE,  # segment-level Expert Choice
    "topk": TopKMoE,  # token top-k
    "topk_aux_free": AuxFreeTopKMoE,  # token top-k balanced by a bias, no auxiliary loss (DeepSeek-V3)
    "remoe": ReMoE,  # ReLU routing with adaptive L1 sparsity control (ReMoE)
}


def ffn_class(kind: str) -> type[FFN]:
    """The class of ``model.ffn`` kind ``kind``; a clear error naming the known kinds otherwise."""
    try:
        return FFN_KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"model.ffn must be one of {', '.join(FFN_KINDS)}, got {kind!r}") from None
