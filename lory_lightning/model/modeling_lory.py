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
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput

from .configuration_lory import LoryConfig
from .transformer import InferenceCache, LoryTransformer


@dataclass
class LoryCausalLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: InferenceCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None  # never given: see LoryForCausalLM.forward


class LoryPreTrainedModel(PreTrainedModel):
    config_class = LoryConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True  # Block.gradient_checkpointing, set by gradient_checkpointing_enable
    _supports_sdpa = True  # attention is torch's scaled_dot_product_attention, whatever is asked
    _tied_weights_keys = {"model.lm_head.weight": "model.tok_emb.weight"}  # with config.tie_word_embeddings

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
            bigger = t.new_zeros(*t.shape[:2], size, t.shape[3])  # (B, nh, S', hs); zeros: see new_cache
            bigger[:, :, :cache.length] = t[:, :, :cache.length]
            store[i] = bigger


def causal_lm_loss(logits: Tensor, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Next-token cross-entropy of logits (B, L, V) against labels (B, L), -100 ignored (transformers'
    convention); divided by ``num_items_in_batch`` when the Trainer counts tokens over accumulated batches."""
    flat_logits, flat_labels = logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten()
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum") / num_items_in_batch


class LoryModel(LoryTransformer):
    """The decoder called as transformers calls a base model (``LoryForCausalLM.base_model``): keyword
    inputs, the final hidden state out. Tools that apply the LM head themselves (TRL's fused loss)
    call it so. Its weights are LoryTransformer's, under the same names."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool | None = None,
                position_ids: Tensor | None = None, **kwargs) -> BaseModelOutputWithPast:  # noqa: ANN003
        refuse_packed_positions(position_ids, input_ids, attention_mask)
        h, _, hidden = self.features(input_ids, attention_mask, bool(output_hidden_states))
        return BaseModelOutputWithPast(last_hidden_state=h, hidden_states=hidden)  # (B, L, d)


def refuse_packed_positions(position_ids: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None) -> None:
    """Positions come from the attention mask (each row from 0 at its first token); position_ids that say
    otherwise (several sequences packed in one row) would be ignored, so they are refused."""
    if position_ids is None:
        return
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    implied = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
    real = mask.bool()
    if not torch.equal(position_ids.expand_as(implied)[real], implied[real]):
        raise ValueError("LoryForCausalLM takes padded batches, not packed ones: position_ids restart inside a row, "
                         "but segment routing needs each row to be one sequence (turn packing / padding_free off)")


class LoryForCausalLM(LoryPreTrainedModel, GenerationMixin):
    def __init__(self, config: LoryConfig) -> None:
        super().__init__(config)
        self.model = LoryModel(config.to_model_config())
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.tok_emb

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.tok_emb = value

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        self.model.lm_head = value

    def resize_token_embeddings(self, *args, **kwargs) -> torch.nn.Embedding:  # noqa: ANN002, ANN003
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.model.config = self.config.to_model_config()  # the decoder's own copy of the vocabulary size
        return embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: InferenceCache | None = None,
                use_cache: bool | None = None, labels: Tensor | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                position_ids: Tensor | None = None, **kwargs) -> LoryCausalLMOutput:  # noqa: ANN003
        """input_ids (B, L) -> logits (B, L, V); ``labels`` (B, L) give the mean next-token loss.

        ``attention_mask`` (B, L) may pad rows on the left or the right: each row computes what it
        computes alone (model/padding.py). Attention weights are not given: torch's
        scaled_dot_product_attention computes attention without forming them.
        """
        if output_attentions:
            raise ValueError("LoryForCausalLM computes attention with torch's scaled_dot_product_attention, which "
                             "does not form the attention weights: call it with output_attentions=False")
        hidden = None
        if cache is None and not use_cache:
            out = self.model(input_ids, attention_mask, output_hidden_states, position_ids)
            logits, hidden = self.model.lm_head(out.last_hidden_state), out.hidden_states  # the training computation
        else:
            if output_hidden_states:
                raise ValueError("LoryForCausalLM gives hidden states from the forward without a cache: "
                                 "call it with use_cache=False")
            if cache is None:
                cache = self.model.new_cache(input_ids.shape[0], input_ids.shape[1], self.config.routing)
            _grow(cache, cache.length + input_ids.shape[1])
            logits = self.model.step(input_ids, cache, attention_mask)  # (B, L, V)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))
        return LoryCausalLMOutput(loss=loss, logits=logits, cache=cache if use_cache else None, hidden_states=hidden)

    def prepare_inputs_for_generation(self, input_ids: Tensor, cache: InferenceCache | None = None,
                                      attention_mask: Tensor | None = None, use_cache: bool | None = True,
                                      **kwargs) -> dict:  # noqa: ANN003
        if not use_cache and self.config.routing == "prompt":
            raise ValueError("routing 'prompt' merges each layer's experts once from the prompt, which only the cache "
                             "remembers: generate with use_cache=True, or set model.config.routing = 'segment' "
                             "(the training computation, which a forward without a cache repeats exactly)")
        # With a cache, only the token it has not seen: the prompt once, then one token a step.
        if cache is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "cache": cache, "use_cache": use_cache, "attention_mask": attention_mask}
