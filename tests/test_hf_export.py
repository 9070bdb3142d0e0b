"""`lory export`: Hugging Face folders that load without lory_lightning and compute what our model computes."""

import dataclasses
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from lory_lightning.checkpoint_io import load_model  # noqa: E402
from lory_lightning.cli import main  # noqa: E402
from lory_lightning.export import export  # noqa: E402
from lory_lightning.model import LoryTransformer, ModelConfig, generate  # noqa: E402
from test_cli_lightning import small_config  # noqa: E402

CFG = ModelConfig(vocab_size=64, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=16, hidden_dim=24, num_experts=4)


def _checkpoint(tmp_path, cfg: ModelConfig) -> tuple[LoryTransformer, str]:
    """A LoryLM-shaped checkpoint of a randomly initialized model (what export reads of one)."""
    torch.manual_seed(0)
    model = LoryTransformer(cfg).eval()
    path = tmp_path / f"{cfg.ffn}.ckpt"
    torch.save({"hyper_parameters": {"arch": dataclasses.asdict(cfg)},
                "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    return model, str(path)


def _hf_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# Loads an exported folder in a fresh interpreter where importing lory_lightning fails, as on a machine
# without it: trust_remote_code runs the modeling code copied into the folder.
WITHOUT_LORY = """
import sys, torch
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "lory_lightning":
            raise ImportError("lory_lightning is not installed here")
sys.meta_path.insert(0, Block())
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
idx = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(idx).logits
    greedy = model.generate(idx, max_new_tokens=12, do_sample=False)
torch.save({"logits": logits, "greedy": greedy, "class": type(model).__name__,
            "lory_loaded": any(m.startswith("lory_lightning") for m in sys.modules)}, sys.argv[3])
"""


@pytest.mark.isolated
def test_a_lory_export_loads_and_matches_without_lory_lightning(tmp_path):
    ours, ckpt = _checkpoint(tmp_path, CFG)
    out = export(ckpt, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["model_type"] == "lory"
    idx = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    torch.save(idx, tmp_path / "idx.pt")
    run = subprocess.run([sys.executable, "-c", WITHOUT_LORY, str(out), str(tmp_path / "idx.pt"),
                          str(tmp_path / "got.pt")], capture_output=True, text=True, env=_hf_env(tmp_path),
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(tmp_path / "got.pt")
    assert got["class"] == "LoryForCausalLM" and not got["lory_loaded"]
    with torch.no_grad():
        torch.testing.assert_close(got["logits"], ours(idx).logits, rtol=0, atol=1e-5)
    assert torch.equal(got["greedy"], generate(ours, idx, 12, temperature=0, routing="prompt"))


@pytest.mark.parametrize("routing", ["prompt", "segment"])
def test_registered_auto_classes_load_without_remote_code_and_decode_as_lory_generate(tmp_path, routing):
    from transformers import AutoModelForCausalLM

    importlib.import_module("lory_lightning.hf")  # registers the lory model type with the Auto classes

    ours, ckpt = _checkpoint(tmp_path, CFG)
    out = export(ckpt, tmp_path / "export", routing=routing)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LoryForCausalLM" and hf.config.routing == routing
    idx = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx).logits, rtol=0, atol=1e-5)  # teacher-forced
        cache = ours.new_cache(2, 13, routing)
        torch.testing.assert_close(hf(idx, use_cache=True).logits, ours.step(idx, cache), rtol=0, atol=1e-5)
        greedy = hf.generate(idx, max_new_tokens=30, do_sample=False)  # past one segment boundary and more
    assert torch.equal(greedy, generate(ours, idx, 30, temperature=0, routing=routing))


@pytest.mark.parametrize("tie", [False, True])
def test_a_dense_export_is_a_plain_llama(tmp_path, tie):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    ours, ckpt = _checkpoint(tmp_path, CFG.replace(ffn="dense", tie_embeddings=tie, n_kv_head=1))  # grouped queries
    out = export(ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert not list(out.glob("*.py"))  # no code of ours
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(hf, LlamaForCausalLM)
    idx = torch.randint(0, 64, (3, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx).logits, rtol=0, atol=1e-5)
        greedy = hf.generate(idx[:, :9], max_new_tokens=15, do_sample=False)
    assert torch.equal(greedy, generate(ours, idx[:, :9], 15, temperature=0))
    # our commands read the folder back as the dense decoder it came from (checkpoint_io.load_model)
    back, meta = load_model(out)
    assert back.config.ffn == "dense" and back.config.n_kv_head == 1 and back.config.tie_embeddings == tie
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, ours(idx).logits, rtol=0, atol=1e-6)


def test_generate_evaluate_and_perplexity_take_the_exported_folder(small_data, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]) == 0
    ckpt = str(tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt")
    assert main(["export", "--ckpt_path", ckpt, "--output", str(tmp_path / "hf")]) == 0
    heldout = str(tmp_path / "heldout.jsonl")
    with open(heldout, "w") as f:
        f.write(json.dumps({"text": "the oven was hot and the bread rose " * 8, "domain": "cooking"}) + "\n")
    runs = {}
    for source in (ckpt, str(tmp_path / "hf")):
        capsys.readouterr()
        assert main(["generate", "--ckpt_path", source, "--prompt", "the oven", "--max_new_tokens", "12",
                     "--temperature", "0"]) == 0
        assert main(["perplexity", "--ckpt_path", source, "--inputs", heldout]) == 0
        assert main(["evaluate", "--ckpt_path", source, "--tasks", "lory_toy_mc", "--limit", "4"]) == 0
        runs[source] = capsys.readouterr().out.replace(source, "SOURCE")
    assert runs[ckpt] == runs[str(tmp_path / "hf")]  # the same text, perplexities and scores, line for line
    assert "cooking" in runs[ckpt]


def test_lory_export_command_writes_the_tokenizer_with_its_end_of_text_token(small_data, tmp_path, capsys):
    from transformers import AutoTokenizer, GenerationConfig

    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]) == 0
    ckpt = tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "hf")]) == 0
    assert f"{tmp_path / 'hf'}" in capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id == tok.eos_token_id
    assert tok.decode(tok("the oven")["input_ids"]) == "the oven"
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "hf")]) == 1  # not empty
    assert "not empty" in capsys.readouterr().err


@pytest.mark.isolated  # works in another folder (chdir)
def test_the_guides_export_and_evaluate_commands_as_written(small_data, tmp_path, monkeypatch, capsys):
    import re
    import shutil

    from test_cli_lightning import ROOT
    from test_cli_paths import SIZE

    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(small_data, tmp_path / "data" / "sample-512")  # the folder lory-tiny.yaml names
    section = (ROOT / "docs" / "huggingface.md").read_text()
    command = re.search(r"```bash\n(lory export .*?)\n```", section).group(1)
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert main(["fit", "--config", "configs/lory-tiny.yaml", "--trainer.max_steps", "2", *SIZE,
                 "--data.vocab_size", "300", "--model.arch.seq_len", "32", "--model.arch.segment_len", "8"]) == 0
    assert main(command.split()[1:]) == 0
    capsys.readouterr()
    exec(compile(code, "docs/huggingface.md", "exec"), {})  # noqa: S102 (our own guide)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("LoryForCausalLM prompt ") and printed[1].startswith("The court held that")
    if importlib.util.find_spec("lm_eval"):  # the guide's evaluate command on the same checkpoint
        evaluate_section = (ROOT / "docs" / "evaluation.md").read_text()
        command = re.search(r"```bash\n(lory evaluate .*?)\n```", evaluate_section).group(1)
        assert main(command.split()[1:]) == 0
        assert "|lory_toy_mc |" in capsys.readouterr().out


def test_a_hugging_face_tokenizer_folder_with_its_own_eos_prepares_trains_generates_and_exports(tmp_path, capsys):
    """A Llama-style tokenizer: no <|endoftext|>, its eos is </s> (named in tokenizer_config.json)."""
    import numpy as np
    import webdataset as wds
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from conftest import make_corpus
    from lory_lightning.data.manifest import load_manifest

    corpus = make_corpus(tmp_path / "in", docs_per_domain=60)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [json.loads(line)["text"] for p in corpus for line in p.read_text().splitlines()]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=280, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>",
                            unk_token="<unk>").save_pretrained(tmp_path / "hf-tok")
    eos = tok.token_to_id("</s>")
    data = tmp_path / "data"
    assert main(["prepare", "--inputs", *map(str, corpus), "--output", str(data), "--seq_len", "32",
                 "--tokenizer", str(tmp_path / "hf-tok"), "--sequences_per_shard", "4", "--quiet"]) == 0
    manifest = load_manifest(data)
    assert manifest["eod_id"] == eos == 2 and manifest["vocab_size"] == 280
    tokens = np.concatenate([np.load(io.BytesIO(s["tokens.npy"])) for shard in sorted(data.glob("train-*.tar.gz"))
                             for s in wds.WebDataset(str(shard), shardshuffle=False)])
    assert (tokens == eos).sum() > 10  # documents are separated by the tokenizer's own eos
    cfg = small_config(tmp_path, data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                 "--data.vocab_size", "280"]) == 0
    ckpt = tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["eod_id"] == eos
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "hf")]) == 0
    exported = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert exported.eos_token == "</s>" and exported.eos_token_id == eos
