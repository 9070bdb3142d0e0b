"""LoryForCausalLM: a LoryTransformer as a Hugging Face causal LM (``generate`` with the Lory cache).

The decoder is model/transformer.py's, unchanged; this file only adapts its calls: ``forward`` without a
cache is the training forward (causal segment routing), with ``use_cache`` it is LoryTransformer.step:
the prompt on the first call (routed as ``config.routing`` says), then one token per call. The cache
is the model's own InferenceCache (keys, values and each Lory layer's merged FFN), which grows as
generation goes, so ``generate`` needs no length up front.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_lory import LoryConfig
from .transformer import InferenceCache, LoryTransformer


@dataclass
class LoryCausalLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: InferenceCache | None = None


class LoryPreTrainedModel(PreTrainedModel):
    config_class = LoryConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    def _init_weights(self, module: torch.nn.Module) -> None:
        pass  # LoryTransformer initializes itself; from_pretrained then loads every weight

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the Lory cache holds merged FFNs beside keys and values: it is its own


def _grow(cache: InferenceCache, needed: int) -> None:
    """Make room for ``needed`` positions, doubling the preallocated keys and values."""
    if needed <= cache.max_len:
        return
    size = max(needed, 2 * cache.max_len)
    for store in (cache.k, cache.v):
        for i, t in enumerate(store):
            bigger = t.new_empty(*t.shape[:2], size, t.shape[3])  # (B, nh, S', hs)
            bigger[:, :, :cache.length] = t[:, :, :cache.length]
            store[i] = bigger


class LoryForCausalLM(LoryPreTrainedModel, GenerationMixin):
    def __init__(self, config: LoryConfig) -> None:
        super().__init__(config)
        self.model = LoryTransformer(config.to_model_config())
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.tok_emb

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: InferenceCache | None = None,
                use_cache: bool | None = None, labels: Tensor | None = None, **kwargs) -> LoryCausalLMOutput:  # noqa: ANN003
        """input_ids (B, L) -> logits (B, L, V); ``labels`` (B, L) give the mean next-token loss."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("LoryForCausalLM takes unpadded batches (equal-length prompts): segment routing "
                             "averages every position of a segment, padding included")
        if cache is None and not use_cache:
            logits = self.model(input_ids).logits  # (B, L, V): the training computation
        else:
            if cache is None:
                cache = self.model.new_cache(input_ids.shape[0], input_ids.shape[1], self.config.routing)
            _grow(cache, cache.length + input_ids.shape[1])
            logits = self.model.step(input_ids, cache)  # (B, L, V)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return LoryCausalLMOutput(loss=loss, logits=logits, cache=cache if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids: Tensor, cache: InferenceCache | None = None,
                                      attention_mask: Tensor | None = None, use_cache: bool | None = True,
                                      **kwargs) -> dict:  # noqa: ANN003
        # With a cache, only the tokens it has not seen: the prompt once, then one token a step.
        if cache is not None:
            input_ids = input_ids[:, cache.length:]
        return {"input_ids": input_ids, "cache": cache, "use_cache": use_cache, "attention_mask": attention_mask}
