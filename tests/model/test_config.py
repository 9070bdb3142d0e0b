import pytest

from lory_lightning.model import LoryTransformer, ModelConfig, param_counts
from test_cli_lightning import ROOT, resolved_config


@pytest.mark.parametrize("ffn", ["lory", "lory_prefix", "segment_expert_choice"])
def test_segment_length_must_divide_sequence_length_for_the_kinds_routing_per_segment(ffn):
    with pytest.raises(ValueError, match="seq_len 500 is not a multiple of model.segment_len 128"):
        ModelConfig(seq_len=500, segment_len=128, ffn=ffn)


@pytest.mark.parametrize("ffn", ["dense", "topk", "expert_choice"])
def test_token_level_kinds_take_any_sequence_length(ffn):
    import torch

    cfg = ModelConfig(seq_len=50, segment_len=128, ffn=ffn, n_layer=1, dim=32, n_head=2, hidden_dim=48,
                      vocab_size=64, num_experts=4)
    logits = LoryTransformer(cfg).train()(torch.zeros(2, 50, dtype=torch.long)).logits
    assert logits.shape == (2, 50, 64)


@pytest.mark.parametrize("ffn", ["lory", "lory_prefix"])
def test_one_segment_per_sequence_is_refused_for_segment_routing(ffn):
    # One segment routes on itself with the gradient cut: the router would never learn.
    with pytest.raises(ValueError, match="router never receives a gradient"):
        ModelConfig(seq_len=128, segment_len=128, ffn=ffn)
    ModelConfig(seq_len=128, segment_len=128, ffn="dense")  # no router: fine


@pytest.mark.parametrize("changes, message", [
    (dict(dim=250, n_head=4), "dim 250 is not a multiple of n_head 4"),
    (dict(ffn="moe"), "model.ffn must be one of"),
    (dict(num_experts=0), "num_experts must be a positive integer"),
    (dict(router_init_std=0.0), "router_init_std must be > 0"),
    (dict(dim=12, n_head=4), "head size dim/n_head = 3 is odd"),
])
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


@pytest.mark.parametrize("ffn", ["lory", "dense"])
@pytest.mark.parametrize("tie", [False, True])
def test_param_counts_match_a_built_model(ffn, tie):
    cfg = ModelConfig(ffn=ffn, tie_embeddings=tie)
    assert param_counts(cfg)["total"] == LoryTransformer(cfg).num_parameters()


def test_the_default_shape_is_the_tiny_model_and_fits_a_laptop():
    cfg = ModelConfig()
    assert param_counts(cfg)["total"] <= 20_000_000
    assert cfg.num_segments >= 4
    assert cfg.is_moe


def _shipped_model(name: str) -> ModelConfig:
    """The model section of a shipped run config, resolved by the CLI (bases included), with the
    vocabulary size the CLI links from the data section."""
    printed = resolved_config(ROOT / "configs" / f"{name}.yaml")
    model = printed["model"]["init_args"]["arch"]
    return ModelConfig(**{**model, "vocab_size": printed["data"]["init_args"]["vocab_size"]})


@pytest.mark.parametrize("name,layers,dim,heads,hidden,experts,ffn", [
    ("lory-0.3b-8e", 24, 1024, 16, 2816, 8, "lory"), ("lory-0.3b-16e", 24, 1024, 16, 2816, 16, "lory"),
    ("lory-0.3b-32e", 24, 1024, 16, 2816, 32, "lory"), ("dense-0.3b", 24, 1024, 16, 2816, 8, "dense"),
    ("lory-1.5b-8e", 48, 1536, 24, 4096, 8, "lory"), ("lory-1.5b-16e", 48, 1536, 24, 4096, 16, "lory"),
    ("lory-1.5b-32e", 48, 1536, 24, 4096, 32, "lory"), ("lory-1.5b-32e-fsdp", 48, 1536, 24, 4096, 32, "lory"),
    ("dense-1.5b", 48, 1536, 24, 4096, 8, "dense"),
])
def test_paper_configs_resolve_to_the_paper_sizes(name, layers, dim, heads, hidden, experts, ffn):
    # LORY.md section 3: LLaMA tokenizer (32k), L = 4096, T = 256
    cfg = _shipped_model(name)
    assert (cfg.n_layer, cfg.dim, cfg.n_head, cfg.hidden_dim, cfg.ffn) == (layers, dim, heads, hidden, ffn)
    assert (cfg.vocab_size, cfg.seq_len, cfg.segment_len) == (32000, 4096, 256)
    if ffn == "lory":
        assert cfg.num_experts == experts


def test_paper_sizes_in_parameters():
    counts = param_counts(_shipped_model("lory-0.3b-8e"))
    assert counts["total"] == pytest.approx(1.8e9, rel=0.03)  # "0.3B/8E = 1.8B total parameters"
    assert counts["active_non_embedding"] == pytest.approx(0.3e9, rel=0.05)
    dense = param_counts(_shipped_model("dense-0.3b"))
    assert dense["total"] == pytest.approx(counts["active"], rel=0.001)  # parameter-matched twin
    big = param_counts(_shipped_model("dense-1.5b"))
    assert big["active_non_embedding"] == pytest.approx(1.36e9, rel=0.05)
