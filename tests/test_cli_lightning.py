"""`lory fit | validate | generate` end to end on a small prepared corpus, and every YAML parsed."""

import contextlib
import csv
import io
from pathlib import Path

import pytest
import torch
import yaml

from lory_lightning.cli import main
from lory_lightning.checkpoint_io import load_checkpoint
from lory_lightning.config_files import config_chain, expand_bases
from lory_lightning.model import ModelConfig
from lory_lightning.model.config import training_flops_per_token

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
CALLBACK_SETS = sorted((ROOT / "callbacks").glob("*.yaml"))


def resolved_config(path) -> dict:
    """A run config as the CLI resolves it (its base configs merged in): what --print_config prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(path), "--print_config"])
    assert err.value.code == 0
    return yaml.safe_load(out.getvalue())


def small_config(tmp_path, data_dir, **model):
    cfg = yaml.safe_load((ROOT / "configs" / "lory-tiny.yaml").read_text())
    cfg["trainer"].update(max_steps=16, val_check_interval=8, limit_val_batches=2, log_every_n_steps=1,
                          enable_progress_bar=False, enable_model_summary=False)
    for logger in cfg["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path / "runs")
    cfg["model"]["arch"].update(seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=32, hidden_dim=48,
                                 num_experts=4, **model)
    cfg["model"]["training"]["dense_warmup"] = 0.25
    # this 32-wide test model has a 16-step budget: it learns visibly only at a higher lr than the shipped 1e-3
    cfg["model"]["optim"]["lr"] = 3.0e-3
    cfg["data"].update(data_dir=str(data_dir), vocab_size=300, batch_size=4)
    for callback in cfg["trainer"].get("callbacks") or []:  # lory-tiny's ThroughputMonitor, over 4 steps
        callback["init_args"]["window_size"] = 4
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(run_dir):
    with open(next(Path(run_dir).rglob("metrics.csv"))) as f:
        return list(csv.DictReader(f))


def test_fit_validate_generate(small_data, tmp_path, capsys, caplog):
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    assert (run / "config.yaml").is_file()  # the resolved config of every run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # linked values are written once, at their source; the module received them
    assert saved["data"]["init_args"]["vocab_size"] == 300 and saved["model"]["init_args"]["arch"]["seq_len"] == 32
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["arch"]["vocab_size"] == 300
    rows = metrics(run)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    val = [r for r in rows if r.get("val/ppl")]
    assert len(val) == 2
    for domain in ("cooking", "space", "law"):
        assert float(val[-1][f"val/{domain}/ppl"]) < 300
    assert [float(r["train/tokens"]) for r in rows if r.get("train/tokens")][-1] == 16 * 4 * 32
    norms = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    assert len(norms) == 16 and all(0 < n < 100 for n in norms)  # the guard's norm, before clipping
    # Lightning's ThroughputMonitor (window of 4 here): tokens/s, and FLOPs/s from the model's own count
    speed = [r for r in rows if r.get("train/device/items_per_sec")]
    assert speed and all(float(r["train/device/items_per_sec"]) > 0 for r in speed)
    cfg_model = ModelConfig(**{**saved["model"]["init_args"]["arch"], "vocab_size": 300})
    for r in speed:
        ratio = float(r["train/device/flops_per_sec"]) / float(r["train/device/items_per_sec"])
        assert ratio == pytest.approx(training_flops_per_token(cfg_model), rel=1e-6)
    assert saved["base"] is None  # the saved config is complete: it extends nothing
    ckpt = run / "checkpoints" / "last.ckpt"
    loaded = load_checkpoint(str(ckpt))  # weights_only=True
    assert loaded["domains"] == ["cooking", "space", "law"] and "tokenizer" in loaded
    assert not any(v for k, v in loaded["state_dict"].items() if k.endswith("dense_phase"))  # upcycled at 4

    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard beside metrics.csv
    out = capsys.readouterr().out
    assert "validation after step 16:" in out and f"checkpoint: {ckpt}" in out
    table = out.split("validation after step 16:")[1]
    for domain in ("cooking", "space", "law"):
        row = next(line for line in table.splitlines() if line.startswith(domain)).split()
        assert float(row[1]) == pytest.approx(float(val[-1][f"val/{domain}/ppl"]), rel=1e-3)
        assert float(row[2]) > 1  # the unigram baseline from the manifest

    # resume: continues at step 16 and stops at 20
    assert main(["fit", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.max_steps", "20"]) == 0
    resumed = metrics(tmp_path / "runs" / "lory-tiny" / "version_1")
    steps = [int(r["step"]) for r in resumed if r.get("train/loss")]
    assert steps == [16, 17, 18, 19]

    capsys.readouterr()
    assert main(["validate", "--config", str(cfg), "--ckpt_path", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"validation of {ckpt}:" in out and "cooking" in out

    assert main(["generate", "--ckpt_path", str(ckpt), "--prompt", "flour butter", "--max_new_tokens", "8",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flour butter") and len(out.rstrip("\n")) > len("flour butter")

    # a dense checkpoint starts a Lory run through upcycling (init_from)
    dense_cfg = small_config(tmp_path, small_data, ffn="dense")
    text = dense_cfg.read_text().replace("dense_warmup: 0.25", "dense_warmup: 0.0")
    dense_cfg.write_text(text.replace("name: lory-tiny", "name: dense"))  # the YAML swap ffn: lory -> dense
    assert main(["fit", "--config", str(dense_cfg), "--trainer.max_steps", "4"]) == 0
    dense_ckpt = tmp_path / "runs" / "dense" / "version_0" / "checkpoints" / "last.ckpt"
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["fit", "--config", str(cfg), "--model.init_from", str(dense_ckpt), "--model.training.dense_warmup", "0",
                     "--trainer.max_steps", "2"]) == 0
    assert "(dense, upcycled into experts)" in caplog.text


def test_bad_key_path_and_checkpoint_exit_nonzero(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(cfg), "--trainer.max_stpes", "3"])
    assert err.value.code != 0
    assert "max_stpes" in capsys.readouterr().err
    assert main(["fit", "--config", str(cfg), "--ckpt_path", str(tmp_path / "missing.ckpt")]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
    assert main(["generate", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--prompt", "x"]) == 1
    assert capsys.readouterr().err.strip() == f"lory generate: error: {tmp_path / 'missing.ckpt'}: no such checkpoint"
    assert main(["fit", "--config", str(cfg), "--model.arch.segment_len", "5"]) != 0
    assert "not a multiple of model.segment_len 5" in capsys.readouterr().err


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_run_config_parses(config, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(config), "--print_config"])
    assert err.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]["arch"]
    assert model["seq_len"] % model["segment_len"] == 0 and model["seq_len"] // model["segment_len"] >= 4
    data = printed["data"]["init_args"]
    assert "seq_len" not in data and data["vocab_size"] > 0  # linked, typed once
    assert printed["trainer"]["max_steps"] > 0


@pytest.mark.parametrize("callbacks", [[p] for p in CALLBACK_SETS] + [CALLBACK_SETS],
                         ids=lambda sets: "+".join(p.name for p in sets))
def test_every_callback_set_composes_with_the_main_job(callbacks, capsys):
    sets = [arg for p in callbacks for arg in ("--config", str(p))]
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(ROOT / "configs" / "lory-tiny.yaml"), *sets, "--print_config"])
    assert err.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["callbacks"] and printed["model"]["init_args"]["arch"]["ffn"] == "lory"


def test_omegaconf_interpolation_inside_a_yaml(tmp_path, capsys):
    cfg = yaml.safe_load((ROOT / "configs" / "lory-tiny.yaml").read_text())
    cfg["trainer"]["val_check_interval"] = "${trainer.max_steps}"
    path = tmp_path / "interp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(path), "--print_config"])
    assert err.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["val_check_interval"] == 400


def test_a_config_extends_its_base_key_by_key(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    base = yaml.safe_load((ROOT / "configs" / "lory-tiny.yaml").read_text())
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../base.yaml\nmodel:\n  arch:\n    ffn: dense\n"
                                               "  training:\n    dense_warmup: 0.0\n")
    (tmp_path / "top.yaml").write_text("base: sub/mid.yaml\ntrainer:\n  max_steps: 7\n")
    assert config_chain(str(tmp_path / "top.yaml")) == [
        str(tmp_path / "sub" / "../base.yaml"), str(tmp_path / "sub" / "mid.yaml"), str(tmp_path / "top.yaml")]
    assert expand_bases(["fit", f"--config={tmp_path / 'top.yaml'}", "--trainer.max_steps", "3"])[-2:] == [
        "--trainer.max_steps", "3"]
    printed = resolved_config(tmp_path / "top.yaml")
    assert printed["trainer"]["max_steps"] == 7 and printed["trainer"]["val_check_interval"] == 100  # kept
    assert printed["model"]["init_args"]["arch"]["ffn"] == "dense"
    assert printed["model"]["init_args"]["optim"]["lr"] == 1.0e-3  # the base's, not the default
    assert printed["model"]["init_args"]["training"]["dense_warmup"] == 0.0


def test_a_bad_base_is_named(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: missing.yaml\n")
    assert main(["fit", "--config", str(tmp_path / "a.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.yaml'}: base: missing.yaml: no such config file" in err
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    assert main(["fit", "--config", str(tmp_path / "b.yaml")]) == 1
    assert "the `base:` chain comes back to" in capsys.readouterr().err


def test_loggers_sharing_a_folder_get_one_version(tmp_path):
    from jsonargparse import Namespace

    from lory_lightning.lightning_cli import pin_shared_versions

    for n in (0, 3):
        (tmp_path / "lory-tiny" / f"version_{n}").mkdir(parents=True)
    (tmp_path / "lory-tiny" / "version_x").mkdir()  # not a version

    def logger(name, **kw):
        return Namespace(class_path="L", init_args=Namespace(save_dir=str(tmp_path), name=name, **kw))
    trainer = Namespace(logger=[logger("lory-tiny"), logger("lory-tiny"), logger("alone"), logger("kept", version=7),
                                logger("kept")])
    pin_shared_versions(trainer)
    assert [lg.init_args.get("version") for lg in trainer.logger] == [4, 4, None, 7, None]


def test_round_1_and_round_2_checkpoints_validate_with_their_keys_moved(small_data, tmp_path, capsys):
    # Round 1 kept the training knobs beside `model` and `optim`; round 2 grouped them as `training`
    # and still called the decoder's settings `model` (--model.model.num_experts); today it is `arch`.
    from lory_lightning.checkpoint_io import TRAINING_KEYS, load_model, upgrade_hparams

    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]) == 0
    ckpt = tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)
    hp = state["hyper_parameters"]
    assert set(hp) >= {"arch", "optim", "training"} and "model" not in hp
    round_2 = {("model" if k == "arch" else k): v for k, v in hp.items()}
    knobs_1 = {k: v for k, v in hp["training"].items() if k in TRAINING_KEYS}  # the knobs round 1 had
    round_1 = {**{k: v for k, v in round_2.items() if k != "training"}, **knobs_1}
    for name, old in (("round-1", round_1), ("round-2", round_2)):
        assert upgrade_hparams(old) == (hp if name == "round-2" else {**hp, "training": knobs_1})
        state["hyper_parameters"] = old
        legacy = tmp_path / f"{name}.ckpt"
        torch.save(state, legacy)
        capsys.readouterr()
        assert main(["validate", "--config", str(cfg), "--ckpt_path", str(legacy)]) == 0, name
        assert "validation of" in capsys.readouterr().out
        assert main(["generate", "--ckpt_path", str(legacy), "--prompt", "oven", "--max_new_tokens", "2"]) == 0
        assert load_model(legacy)[0].config == load_model(ckpt)[0].config


def test_an_old_config_key_is_named_with_its_new_name(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    old = yaml.safe_load(cfg.read_text())
    old["model"]["model"] = old["model"].pop("arch")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert main(["fit", "--config", str(tmp_path / "old.yaml")]) == 1
    assert "model.model is now model.arch" in capsys.readouterr().err
    assert main(["fit", "--config", str(cfg), "--model.model.num_experts", "2"]) == 1
    assert "--model.model.num_experts is now --model.arch.num_experts" in capsys.readouterr().err


def test_model_compile_trains_the_same_model_and_its_checkpoint_loads_anywhere(small_data, tmp_path):
    # model.compile: the blocks run through torch.compile; losses match eager within float noise,
    # and the checkpoint has the eager model's keys (generate, export, init_from need no compile).
    cfg = small_config(tmp_path, small_data)
    losses, states = {}, {}
    for version, compiled in enumerate(("false", "true")):
        assert main(["fit", "--config", str(cfg), "--model.compile", compiled, "--trainer.max_steps", "4",
                     "--trainer.val_check_interval", "4"]) == 0
        run = tmp_path / "runs" / "lory-tiny" / f"version_{version}"
        losses[compiled] = [float(r["train/loss"]) for r in metrics(run) if r.get("train/loss")]
        states[compiled] = load_checkpoint(str(run / "checkpoints" / "last.ckpt"))["state_dict"]
    assert states["true"].keys() == states["false"].keys()
    assert len(losses["true"]) == 4
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    ckpt = tmp_path / "runs" / "lory-tiny" / "version_1" / "checkpoints" / "last.ckpt"
    assert main(["generate", "--ckpt_path", str(ckpt), "--prompt", "oven", "--max_new_tokens", "3"]) == 0
