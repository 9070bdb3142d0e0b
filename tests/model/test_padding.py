"""Padded batches (model/padding.py): each row computes and generates what it computes alone."""

import pytest
import torch

from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.model.padding import Padding

LENGTHS = (3, 9, 5, 12)  # segment_len 4: rows end inside a segment, on a boundary, and in the first one


def _model(ffn: str) -> LoryTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, dim=32, n_layer=2, n_head=4, n_kv_head=2, hidden_dim=48, num_experts=4,
                      segment_len=4, seq_len=16, ffn=ffn, top_k=2)
    return LoryTransformer(cfg).double().eval()


def _batch(side: str, width: int = 14) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 50, (n,), generator=g) for n in LENGTHS]
    idx, mask = torch.zeros(len(seqs), width, dtype=torch.long), torch.zeros(len(seqs), width, dtype=torch.long)
    for b, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        idx[b, cols], mask[b, cols] = s, 1
    return seqs, idx, mask


def _greedy(model: LoryTransformer, idx: torch.Tensor, routing: str, mask=None, n: int = 9) -> torch.Tensor:
    cache = model.new_cache(idx.shape[0], idx.shape[1] + n, routing)
    logits, out = model.step(idx, cache, mask)[:, -1], []
    for _ in range(n):
        out.append(logits.argmax(-1))
        logits = model.step(out[-1][:, None], cache)[:, -1]
    return torch.stack(out, dim=1)  # (B, n)


@pytest.mark.parametrize("ffn", ["lory", "lory_prefix", "dense", "topk", "topk_aux_free", "remoe"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_rows_logits_and_hidden_states_are_its_own_alone(ffn, side):
    model = _model(ffn)
    seqs, idx, mask = _batch(side)
    with torch.no_grad():
        out = model(idx, mask, output_hidden_states=True)
        for b, s in enumerate(seqs):
            alone = model(s[None], output_hidden_states=True)
            real = mask[b].bool()
            torch.testing.assert_close(out.logits[b][real], alone.logits[0], rtol=0, atol=1e-12)
            for h, h_alone in zip(out.hidden, alone.hidden):
                torch.testing.assert_close(h[b][real], h_alone[0], rtol=0, atol=1e-12)
    assert len(out.hidden) == model.config.n_layer + 1


@pytest.mark.parametrize("ffn", ["lory", "lory_prefix", "dense", "topk", "topk_aux_free", "remoe"])
@pytest.mark.parametrize("routing", ["prompt", "segment"])
def test_a_left_padded_batch_of_prompts_generates_what_each_generates_alone(ffn, routing):
    model = _model(ffn)
    seqs, idx, mask = _batch("left")
    with torch.no_grad():
        batched = _greedy(model, idx, routing, mask)
        for b, s in enumerate(seqs):
            assert torch.equal(batched[b], _greedy(model, s[None], routing)[0]), b


def test_beam_rows_reorder_with_their_merged_experts_and_lengths():
    model = _model("lory")
    _, idx, mask = _batch("left")
    cache = model.new_cache(4, 20, "segment")
    with torch.no_grad():
        model.step(idx, cache, mask)
    before = cache.ffn[0].w_gate.clone(), cache.ffn[0].segment.total.clone(), cache.lengths.clone()
    rows = torch.tensor([3, 3, 0, 1])
    cache.reorder_cache(rows)
    assert torch.equal(cache.ffn[0].w_gate, before[0][rows]) and torch.equal(cache.ffn[0].segment.total, before[1][rows])
    assert cache.lengths.tolist() == [12, 12, 3, 9] and cache.k[1].shape[0] == 4


@pytest.mark.parametrize("ffn", ["expert_choice", "segment_expert_choice"])
def test_expert_choice_kinds_refuse_padding_by_name(ffn):
    model = _model(ffn)
    _, idx, mask = _batch("right")
    with pytest.raises(ValueError, match=f"model.ffn {ffn}: .*padding would take their capacity"):
        model(idx, mask)
    model(idx, torch.ones_like(mask))  # an all-ones mask is no padding


def test_a_mask_with_a_gap_is_refused_naming_the_row():
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1]])
    with pytest.raises(ValueError, match=r"attention_mask row 2 is \[1, 0, 1\]: each row's tokens must be one run"):
        Padding.from_mask(mask)
    with pytest.raises(ValueError, match="row 1"):
        Padding.from_mask(torch.tensor([[1, 1], [0, 0]]))
    assert Padding.from_mask(torch.ones(2, 3)) is None and Padding.from_mask(None) is None
    padding = Padding.from_mask(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]]))
    t = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    assert padding.aligned(t).tolist() == [[11, 12, 13, 10], [20, 21, 22, 23]]
    assert torch.equal(padding.restored(padding.aligned(t)), t)
