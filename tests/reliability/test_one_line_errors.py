"""Bad settings and damaged inputs end in one line that names the key or path and what to do.

Each case here used to end in a traceback, a wait, a silent change of meaning, or a line with no
path (RELIABILITY.md, "one line instead of a traceback").
"""

import errno
import json

import pytest

from lory_lightning.cli import main
from lory_lightning.data.prepare import PrepareConfig
from test_cli_lightning import small_config


@pytest.fixture(scope="module")
def checkpoint(small_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    cfg = small_config(tmp, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2"]) == 0
    return tmp / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt"


def last_err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.mark.parametrize("flag, value, message", [
    ("max_steps", "-5", "trainer.max_steps is -5: give the number of optimizer steps"),
    ("val_check_interval", "0", "trainer.val_check_interval is 0: validate every N >= 1 training batches"),
    ("gradient_clip_val", "-1", "trainer.gradient_clip_val is -1: a gradient norm bound must be >= 0"),
])
def test_impossible_trainer_values_are_refused_by_key_before_training(small_data, tmp_path, capsys, flag, value,
                                                                     message):
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), f"--trainer.{flag}", value]) == 1
    line = last_err_line(capsys)
    assert line.startswith("lory fit: error: ") and message in line
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


@pytest.mark.parametrize("key, value, message", [
    ("sequences_per_shard", 0, "sequences_per_shard must be >= 1, got 0"),
    ("embed_dim", 0, "embed_dim must be >= 1"),
])
def test_impossible_prepare_values_are_refused_when_read(key, value, message):
    # sequences_per_shard 0 used to fail only after every stage up to pack had run; embed_dim 0
    # silently made the similarity order the input order.
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**{key: value})


def test_validation_inputs_that_are_training_inputs_are_named(tmp_path, capsys):
    from conftest import make_corpus

    files = [str(p) for p in make_corpus(tmp_path / "in")]
    assert main(["prepare", "--output", str(tmp_path / "o"), "--inputs", *files, "--val_inputs", files[1]]) == 1
    line = last_err_line(capsys)
    assert f"--val_inputs {files[1]} is also in --inputs (the same content)" in line
    assert not (tmp_path / "o").exists()


def test_generate_names_a_missing_tokenizer_and_refuses_a_cache_larger_than_memory(checkpoint, capsys):
    assert main(["generate", "--ckpt_path", str(checkpoint), "--prompt", "oven", "--tokenizer", "/missing"]) == 1
    assert last_err_line(capsys) == ("lory generate: error: /missing: no tokenizer file or folder; give a "
                                     "tokenizer.json, a Hugging Face tokenizer folder, or leave it out to train one")
    assert main(["generate", "--ckpt_path", str(checkpoint), "--prompt", "oven", "--max_new_tokens",
                 "100000000000"]) == 1
    line = last_err_line(capsys)
    assert "--max_new_tokens 100000000000 needs a KV cache of" in line and "ask for fewer tokens" in line


def test_generate_warns_past_the_trained_length(checkpoint, capsys):
    # the small model trains on 32 positions; the prompt and 40 new tokens reach past it
    assert main(["generate", "--ckpt_path", str(checkpoint), "--prompt", "oven flour", "--max_new_tokens", "40",
                 "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "past the 32 positions the model was trained on" in err


def test_evaluate_names_an_unknown_task(checkpoint, capsys):
    pytest.importorskip("lm_eval")
    assert main(["evaluate", "--ckpt_path", str(checkpoint), "--tasks", "lory_toy_mcq"]) == 1
    line = last_err_line(capsys)
    assert "--tasks: lory_toy_mcq not known to lm-eval" in line and "(close: lory_toy_mc" in line


def test_export_onto_a_full_disk_names_the_folder_and_a_rerun_succeeds(checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from transformers import PreTrainedModel

    real = PreTrainedModel.save_pretrained

    def full(self, folder, *args, **kwargs):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "export"
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    assert main(["export", "--ckpt_path", str(checkpoint), "--output", str(out)]) == 1
    assert last_err_line(capsys) == f"lory export: error: {out}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left to block a rerun
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    assert main(["export", "--ckpt_path", str(checkpoint), "--output", str(out)]) == 0
    assert json.loads((out / "lory_export.json").read_text())["architecture"] == "LoryForCausalLM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_checkpoint_truncated_anywhere_is_named_in_one_line(checkpoint, tmp_path):
    # About 8% of truncation points used to give "[Errno 22] Invalid argument" with no path (the
    # memory-mapped read of the step, which every command that takes --ckpt_path does first).
    from lory_lightning.checkpoint_io import load_checkpoint, read_checkpoint_meta
    from lory_lightning.errors import one_line

    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.ckpt"
    for at in range(1, len(data), max(1, len(data) // 300)):
        cut.write_bytes(data[:at])
        for read in (read_checkpoint_meta, load_checkpoint):
            with pytest.raises(ValueError) as err:
                read(cut)
            assert one_line(err.value).startswith(f"{cut}: not a readable checkpoint"), (at, one_line(err.value))


def test_a_domain_named_all_keeps_its_row_apart_from_the_total():
    from lory_lightning.summary import perplexity_table

    table = perplexity_table(["all", "code"], {"val/all/ppl": 10.0, "val/code/ppl": 20.0, "val/ppl": 14.0})
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["all", "code", "(all)"]


def test_a_url_data_folder_is_not_told_to_run_prepare_onto_the_url():
    from lory_lightning.data.manifest import prepare_advice

    assert "lory prepare --output http" not in prepare_advice("http://host/data")
    assert "upload DIR's files to http://host/data" in prepare_advice("http://host/data")
    assert prepare_advice("data/x") == "rerun `lory prepare --output data/x --overwrite`"
