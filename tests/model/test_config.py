import pytest

from lory_lightning.model import PRESETS, LoryTransformer, ModelConfig, param_counts


def test_segment_length_must_divide_sequence_length():
    with pytest.raises(ValueError, match="seq_len 500 is not a multiple of model.segment_len 128"):
        ModelConfig(seq_len=500, segment_len=128)


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


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="known presets: .*tiny"):
        ModelConfig.from_name("huge")


@pytest.mark.parametrize("name", ["tiny", "tiny-dense"])
@pytest.mark.parametrize("tie", [False, True])
def test_param_counts_match_a_built_model(name, tie):
    cfg = ModelConfig.from_name(name, tie_embeddings=tie)
    assert param_counts(cfg)["total"] == LoryTransformer(cfg).num_parameters()


def test_tiny_preset_fits_a_laptop():
    cfg = ModelConfig.from_name("tiny")
    assert param_counts(cfg)["total"] <= 20_000_000
    assert cfg.num_segments >= 4
    assert cfg.is_moe


def test_paper_presets_have_the_paper_sizes():
    counts = param_counts(ModelConfig.from_name("0.3b-8e"))
    assert counts["total"] == pytest.approx(1.8e9, rel=0.03)  # "0.3B/8E = 1.8B total parameters"
    assert counts["active_non_embedding"] == pytest.approx(0.3e9, rel=0.05)
    dense = param_counts(ModelConfig.from_name("0.3b-dense"))
    assert dense["total"] == pytest.approx(counts["active"], rel=0.001)  # parameter-matched twin
    big = param_counts(ModelConfig.from_name("1.5b-dense"))
    assert big["active_non_embedding"] == pytest.approx(1.36e9, rel=0.05)
    for name in PRESETS:
        cfg = ModelConfig.from_name(name)
        assert cfg.seq_len % cfg.segment_len == 0
    assert {"0.3b-8e", "0.3b-16e", "0.3b-32e", "1.5b-8e", "1.5b-16e", "1.5b-32e"} <= set(PRESETS)
