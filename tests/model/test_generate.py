"""Inference: KV-cache decoding equals a full forward, prompt-only routing merges once per layer."""

from unittest import mock

import pytest
import torch

from lory_lightning.model import LoryMoE, LoryTransformer, ModelConfig, SwiGLU, generate, sample_next

CFG = ModelConfig(vocab_size=97, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16,
                  hidden_dim=24, num_experts=4, router_init_std=0.5)


def incremental_logits(model, seq, prompt_len, mode):
    """Logits of every position of seq (B, L), computed with prefill + one-token decoding."""
    cache = model.new_cache(seq.shape[0], seq.shape[1], mode)
    out = [model.step(seq[:, :prompt_len], cache)]
    for t in range(prompt_len, seq.shape[1]):
        out.append(model.step(seq[:, t:t + 1], cache))
    return torch.cat(out, dim=1), cache


@pytest.mark.parametrize("prompt_len", [8, 13, 16, 31])
def test_segment_routing_decoding_equals_full_forward(prompt_len):
    model = LoryTransformer(CFG).double().eval()
    seq = torch.randint(0, 97, (3, 32))
    logits, _ = incremental_logits(model, seq, prompt_len, "segment")
    torch.testing.assert_close(logits, model(seq).logits, rtol=0, atol=1e-10)


def test_segment_routing_with_short_prompt_matches_training_from_segment_one():
    # A prompt inside segment 0 routes segment 0 on the prompt (the rest of the segment is not
    # known yet). From segment 1 on, each layer routes exactly as in training: checked per layer,
    # because through attention the model's later positions also see segment 0's outputs.
    layer = LoryMoE(16, 24, 4, 8).double().eval()
    layer.reset_parameters(std=0.3, router_std=0.5)
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    y0, cache = layer.prefill(x[:, :5], "segment")
    ys = [y0] + [layer.decode(x[:, t:t + 1], cache, t) for t in range(5, 30)]
    y = torch.cat(ys, dim=1)
    torch.testing.assert_close(y[:, :5], layer(x[:, :5]), rtol=0, atol=1e-12)
    torch.testing.assert_close(y[:, 8:], layer(x)[:, 8:], rtol=0, atol=1e-12)


def test_prompt_routing_decoding_equals_a_dense_model_with_the_merged_ffn():
    model = LoryTransformer(CFG).double().eval()
    seq = torch.randint(0, 97, (1, 30))
    logits, cache = incremental_logits(model, seq, 11, "prompt")
    # Reference: the same decoder with each FFN replaced by the merged FFN, run in one forward.
    dense = LoryTransformer(CFG.replace(ffn="dense")).double().eval()
    state = {k: v for k, v in model.state_dict().items() if ".ffn." not in k}
    for layer, ffn_cache in enumerate(cache.ffn):
        for name in ("w_gate", "w_up", "w_down"):
            state[f"blocks.{layer}.ffn.{name}"] = getattr(ffn_cache, name)[0]
    dense.load_state_dict(state)
    torch.testing.assert_close(logits, dense(seq).logits, rtol=0, atol=1e-10)
    # and the merged FFN is the one routed on the prompt's mean FFN input
    h = model.tok_emb(seq[:, :11]).double()
    block = model.blocks[0]
    with torch.no_grad():
        cos, sin = model._rope(0, 11, h.device)
        h = h + block.attn(block.attn_norm(h), cos, sin)
        probs = block.ffn.router_logits(block.ffn_norm(h).mean(1)).softmax(-1)
        expected = torch.einsum("be,edf->bdf", probs, block.ffn.w_gate)
    torch.testing.assert_close(cache.ffn[0].w_gate, expected, rtol=0, atol=1e-12)


def count_merges(model, **kwargs):
    with mock.patch.object(LoryMoE, "merged", autospec=True, side_effect=LoryMoE.merged) as merged:
        out = generate(model, **kwargs)
    return out, merged.call_count


def test_prompt_only_routing_merges_once_per_layer():
    model = LoryTransformer(CFG)
    prompt = torch.randint(0, 97, (2, 5))
    out, merges = count_merges(model, prompt_ids=prompt, max_new_tokens=25, routing="prompt")
    assert out.shape == (2, 30)
    assert merges == CFG.n_layer


def test_segment_routing_merges_at_every_segment_boundary():
    model = LoryTransformer(CFG)
    prompt = torch.randint(0, 97, (2, 5))
    # positions 0..29: prefill merges all prompt segments plus the last one again (1 + 1 per layer);
    # decoding crosses boundaries at 8, 16, 24 -> 3 more merges per layer.
    _, merges = count_merges(model, prompt_ids=prompt, max_new_tokens=25, routing="segment")
    assert merges == CFG.n_layer * (2 + 3)


def test_dense_model_generates_and_greedy_is_deterministic():
    model = LoryTransformer(CFG.replace(ffn="dense"))
    prompt = torch.randint(0, 97, (2, 4))
    a = generate(model, prompt, 10, temperature=0)
    b = generate(model, prompt, 10, temperature=0)
    assert torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    assert isinstance(model.blocks[0].ffn, SwiGLU)


def test_sampling_is_seeded_and_top_k_restricts():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    assert sample_next(logits, temperature=0).item() == 1
    draws = {sample_next(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(s)).item()
             for s in range(50)}
    assert draws == {1, 3}
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    model = LoryTransformer(CFG)
    prompt = torch.randint(0, 97, (1, 3))
    assert torch.equal(generate(model, prompt, 8, generator=g1), generate(model, prompt, 8, generator=g2))


def test_eos_stops_and_pads():
    model = LoryTransformer(CFG)
    prompt = torch.randint(0, 97, (1, 3))
    greedy = generate(model, prompt, 6, temperature=0)
    eos = greedy[0, 3].item()  # the first generated token
    out = generate(model, prompt, 6, temperature=0, eos_id=eos)
    assert out.shape == (1, 4) and out[0, 3].item() == eos


def test_bad_inputs_are_refused():
    model = LoryTransformer(CFG)
    with pytest.raises(ValueError, match="routing mode must be one of"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, routing="prefix")
    with pytest.raises(ValueError, match="prompt_ids must be"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next(torch.zeros(1, 4), temperature=-1)
