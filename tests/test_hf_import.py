"""model.init_from: hf:PATH: a saved Llama-architecture model becomes our dense model exactly, then Lory."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lory_lightning.model import LoryTransformer, ModelConfig, param_counts  # noqa: E402
from lory_lightning.module import LoryLM  # noqa: E402
from lory_lightning.training import TrainingConfig  # noqa: E402

# grouped queries (4 heads, 2 key/value heads), a RoPE base and norm epsilon other than ours, odd vocabulary
LLAMA = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rope_theta=5.0e5, rms_norm_eps=1e-6, max_position_embeddings=64)
OURS = dict(vocab_size=97, dim=32, hidden_dim=40, n_layer=2, n_head=4, n_kv_head=2, rope_base=5.0e5,
            norm_eps=1e-6, seq_len=32, segment_len=8, num_experts=4)


def _saved_llama(tmp_path, tie: bool, kind: str = "llama"):
    torch.manual_seed(0)
    cls_cfg, cls_model = ((transformers.LlamaConfig, transformers.LlamaForCausalLM) if kind == "llama" else
                          (transformers.MistralConfig, transformers.MistralForCausalLM))
    extra = {} if kind == "llama" else {"sliding_window": None}
    model = cls_model(cls_cfg(**LLAMA, tie_word_embeddings=tie, **extra)).eval()
    with torch.no_grad():  # a random init far from the defaults' near-zero values
        for p in model.parameters():
            p.normal_(0, 0.2)
    path = tmp_path / f"{kind}-{tie}"
    model.save_pretrained(path)  # local only: nothing is downloaded
    return model, path


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_an_imported_llama_computes_what_transformers_computes_and_upcycles_to_the_same_function(tmp_path, tie,
                                                                                                  kind):
    hf, path = _saved_llama(tmp_path, tie, kind)
    cfg = ModelConfig(**OURS, ffn="dense", tie_embeddings=tie)
    dense = LoryLM(arch=cfg, init_from=f"hf:{path}").model.eval()
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(dense(idx).logits, expected, rtol=0, atol=1e-4)
        lory = LoryLM(arch=cfg.replace(ffn="lory"), init_from=f"hf:{path}").model.eval()
        assert lory.moe_layers() and lory.moe_layers()[0].w_gate.shape == (4, 32, 40)
        torch.testing.assert_close(lory(idx).logits, dense(idx).logits, rtol=0, atol=1e-5)  # equal experts


def test_the_run_config_must_have_the_checkpoints_shape(tmp_path):
    _, path = _saved_llama(tmp_path, tie=False)
    with pytest.raises(ValueError, match=r"dim: 32 \(config: 64\).*kv_heads: 2 \(config: 4\)"):
        LoryLM(arch=ModelConfig(**{**OURS, "dim": 64, "n_kv_head": None}), init_from=f"hf:{path}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LoryLM(arch=ModelConfig(**OURS), init_from=f"hf:{tmp_path / 'nowhere'}")


def test_a_mistral_window_shorter_than_the_sequence_is_refused(tmp_path):
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**LLAMA, sliding_window=16))
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="sliding window 16 is shorter than model.seq_len 32"):
        LoryLM(arch=ModelConfig(**OURS), init_from=f"hf:{tmp_path / 'm'}")


def test_grouped_query_attention_decodes_as_its_forward():
    cfg = ModelConfig(**OURS)
    model = LoryTransformer(cfg).eval()
    assert model.blocks[0].attn.qkv.weight.shape == (32 + 2 * 16, 32)  # q (d) + k, v (2 heads of 8 each)
    assert param_counts(cfg)["total"] == model.num_parameters()
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx).logits
        cache = model.new_cache(2, 32, "segment")
        steps = [model.step(idx[:, :5], cache)] + [model.step(idx[:, i:i + 1], cache) for i in range(5, 32)]
    torch.testing.assert_close(torch.cat(steps, dim=1)[:, 8:], full[:, 8:], rtol=0, atol=1e-5)


def test_a_dense_training_run_warm_starts_from_the_import(tmp_path):
    _, path = _saved_llama(tmp_path, tie=False)
    lm = LoryLM(arch=ModelConfig(**OURS), training=TrainingConfig(), init_from=f"hf:{path}")
    assert not lm.in_dense_phase()  # imported dense weights are upcycled at once, not warmed up again


def _shapeless_config(tmp_path, small_data, path):
    """small_config with the keys a checkpoint fixes left out, starting from ``path``."""
    import yaml

    from test_cli_lightning import small_config

    cfg = yaml.safe_load(small_config(tmp_path, small_data).read_text())
    for key in ("n_layer", "n_head", "dim", "hidden_dim"):
        cfg["model"]["arch"].pop(key, None)
    cfg["model"]["init_from"] = path
    cfg["trainer"].update(max_steps=2, val_check_interval=2)
    out = tmp_path / "import.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def test_fit_reads_the_shape_from_the_import_and_refuses_a_key_that_disagrees(tmp_path, small_data, capsys):
    import shutil

    import yaml

    from lory_lightning.cli import main

    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, "vocab_size": 300}))
    llama.save_pretrained(tmp_path / "llama")
    assert main(["fit", "--config", str(_shapeless_config(tmp_path, small_data, f"hf:{tmp_path / 'llama'}"))]) == 0
    err = capsys.readouterr().err
    assert ("model.arch.dim=32, model.arch.n_layer=2, model.arch.n_kv_head=2, model.arch.hidden_dim=40, "
            "model.arch.rope_base=500000.0, model.arch.norm_eps=1e-06 read from its config.json") in err
    saved = yaml.safe_load(next((tmp_path / "runs").rglob("config.yaml")).read_text())["model"]["init_args"]["arch"]
    assert (saved["n_head"], saved["n_kv_head"], saved["rope_base"], saved["ffn"]) == (4, 2, 5.0e5, "lory")

    # a key given explicitly must agree: one line names it
    shapeless = str(_shapeless_config(tmp_path, small_data, f"hf:{tmp_path / 'llama'}"))
    assert main(["fit", "--config", shapeless, "--model.arch.n_head", "2"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lory fit: error: model.init_from hf:{tmp_path / 'llama'}: model.arch.n_head is 2, the checkpoint's "
        "config.json says 4: drop the key (it is read from the checkpoint) or set 4")

    # data.vocab_size (300, given in the config file) must be the checkpoint's vocabulary too
    bigger = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, "vocab_size": 400}))
    bigger.save_pretrained(tmp_path / "llama-400")
    assert main(["fit", "--config", str(_shapeless_config(tmp_path, small_data, f"hf:{tmp_path / 'llama-400'}"))]) == 1
    assert "data.vocab_size is 300, the checkpoint's config.json says 400" in capsys.readouterr().err
    unstated = _shapeless_config(tmp_path, small_data, f"hf:{tmp_path / 'llama'}")
    cfg = yaml.safe_load(unstated.read_text())
    del cfg["data"]["vocab_size"]  # not given: read from the checkpoint (8192 by default otherwise)
    unstated.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(unstated)]) == 0
    assert "data.vocab_size=300" in capsys.readouterr().err

    # the folder without hf: is read as one, with a note
    shutil.copy(small_data / "tokenizer.json", tmp_path / "llama" / "tokenizer.json")  # the same vocabulary
    assert main(["fit", "--config", str(_shapeless_config(tmp_path, small_data, str(tmp_path / "llama")))]) == 0
    assert f"read as hf:{tmp_path / 'llama'}" in capsys.readouterr().err

    # a checkpoint whose tokenizer is another than the data's is refused, naming what to run
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(tmp_path / "llama" / "tokenizer.json"))
    assert main(["fit", "--config", str(_shapeless_config(tmp_path, small_data, f"hf:{tmp_path / 'llama'}"))]) == 1
    assert f"prepare it with `lory prepare --tokenizer {tmp_path / 'llama'}`" in capsys.readouterr().err


def test_hf_prefix_on_a_lory_checkpoint_says_to_drop_it(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=f"this is a lory checkpoint: model.init_from {ckpt}, without hf:"):
        LoryLM(arch=ModelConfig(**OURS), init_from=f"hf:{ckpt}")
