"""Every path the README and a user take through `lory fit | validate | prepare` works as documented."""

import json
import os

import pytest
import yaml

from lory_lightning.cli import main
from lory_lightning.optim import lr_multiplier
from test_cli_lightning import ROOT, metrics, small_config

SIZE = ["--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2", "--data.batch_size", "2",
        "--model.arch.n_layer", "1", "--model.arch.dim", "32", "--model.arch.n_head", "2",
        "--model.arch.hidden_dim", "32", "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]


@pytest.mark.isolated  # works in another folder (chdir)
def test_the_readme_resume_command_continues_the_latest_run_in_its_own_folder(tmp_path, monkeypatch, capsys):
    # The README's commands, as written, in a fresh working folder: only sizes shrunk.
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "configs", tmp_path / "configs")
    assert main(["fit", "--config", "configs/lory-tiny.yaml", "--ckpt_path", "last", *SIZE]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to resume" in err[0] and "runs/lory-tiny/version_*/checkpoints/last.ckpt" in err[0]
    assert main(["fit", "--config", "configs/lory-tiny.yaml", "--trainer.max_steps", "4", *SIZE]) == 0
    assert main(["fit", "--config", "configs/lory-tiny.yaml", "--ckpt_path", "last", "--trainer.max_steps", "6",
                 *SIZE]) == 0
    out = capsys.readouterr().out
    assert "runs/lory-tiny/version_0/checkpoints/last.ckpt" in out
    assert sorted(p.name for p in (tmp_path / "runs" / "lory-tiny").iterdir()) == ["version_0"]  # no new folder
    rows = metrics(tmp_path / "runs" / "lory-tiny" / "version_0")
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3, 4, 5]  # one unbroken curve
    assert len([r for r in rows if r.get("val/ppl")]) == 3  # validations at steps 2, 4, 6


def test_shipped_callback_sets_compose_with_each_other_and_a_run_configs_own(small_data, tmp_path, capsys):
    cfg_path = small_config(tmp_path, small_data)
    cfg = yaml.safe_load(cfg_path.read_text())
    own = tmp_path / "own"
    cfg["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"dirpath": str(own), "filename": "own-{step}", "save_top_k": -1}}]
    cfg_path.write_text(yaml.safe_dump(cfg))
    sets = ["--config", str(ROOT / "callbacks" / "checkpoints.yaml"),
            "--config", str(ROOT / "callbacks" / "expert-monitoring.yaml"),
            "--config", str(ROOT / "callbacks" / "device-stats.yaml")]
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(cfg_path), *sets, "--print_config"])
    names = [c["class_path"].rsplit(".", 1)[1] for c in yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]]
    assert names == ["ModelCheckpoint", "ModelCheckpoint", "LearningRateMonitor", "RoutingMonitor",
                     "DomainSpecialization", "DeviceStatsMonitor"]
    assert main(["fit", "--config", str(cfg_path), *sets, "--trainer.max_steps", "10"]) == 0
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    assert [p.name for p in own.glob("own-*.ckpt")]  # the run config's own callback
    assert list((run / "checkpoints").glob("step*-ppl*.ckpt"))  # checkpoints.yaml: best by val/ppl
    assert any(k.startswith("lr-AdamW") for k in metrics(run)[0])  # checkpoints.yaml: LearningRateMonitor
    assert list((run / "specialization").glob("step8.json"))  # expert-monitoring.yaml: DomainSpecialization
    assert any(r.get("routing/utilization") for r in metrics(run))  # expert-monitoring.yaml: RoutingMonitor
    memory = [float(v) for r in metrics(run) for k, v in r.items() if k.endswith("cpu_vm_percent") and v]
    assert memory and all(0 < m <= 100 for m in memory)  # device-stats.yaml: the process's RAM use


def test_the_model_and_the_data_module_swap_by_class_path(small_data, tmp_path):
    cfg_path = small_config(tmp_path, small_data)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"] = {"class_path": "swap_classes.LabelledLM", "init_args": {**cfg["model"], "label": "abc"}}
    cfg["data"] = {"class_path": "swap_classes.HalfBatchData", "init_args": cfg["data"]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(cfg_path), "--trainer.max_steps", "4", "--model.training.dense_warmup", "0.5"]) == 0
    rows = metrics(tmp_path / "runs" / "lory-tiny" / "version_0")
    assert [float(r["train/labelled"]) for r in rows if r.get("train/labelled")] == [3.0] * 4
    assert [float(r["train/tokens"]) for r in rows if r.get("train/tokens")][-1] == 4 * 2 * 32  # batch 4 halved


@pytest.mark.parametrize("flag", ["--optimizer=torch.optim.SGD", "--lr_scheduler", "--optimizer.lr=0.1"])
def test_optimizer_and_scheduler_flags_are_refused_with_the_keys_to_use(small_data, tmp_path, capsys, flag):
    cfg = small_config(tmp_path, small_data)
    args = ["fit", "--config", str(cfg), *flag.split()]
    if flag == "--lr_scheduler":
        args.append("torch.optim.lr_scheduler.ConstantLR")
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not supported" in err[0] and "model.optim.lr" in err[0]


def test_train_lr_is_the_rate_each_step_used(small_data, tmp_path):
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "12", "--model.optim.warmup_fraction",
                 "0.25"]) == 0
    rows = metrics(tmp_path / "runs" / "lory-tiny" / "version_0")
    logged = {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}
    peak = 3.0e-3  # small_config's lr
    assert logged == {s: pytest.approx(peak * lr_multiplier(s, 12, 3, 0.1)) for s in range(12)}


def test_validate_reports_the_validated_corpus_by_its_own_domain_names(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "4"]) == 0
    ckpt = tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt"
    # another corpus, other domains, the checkpoint's tokenizer (given with --tokenizer)
    news = tmp_path / "news"
    news.mkdir()
    for name, word in (("politics", "vote senate election"), ("sport", "goal match league")):
        (news / f"{name}.jsonl").write_text("".join(
            json.dumps({"text": f"{word} {i} " * 40}) + "\n" for i in range(30)))
    out = tmp_path / "news-data"
    assert main(["prepare", "--output", str(out), "--inputs", str(news), "--seq_len", "32", "--tokenizer",
                 str(small_data / "tokenizer.json"), "--val_fraction", "0.3", "--sequences_per_shard", "4",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["validate", "--config", str(cfg), "--ckpt_path", str(ckpt), "--data.data_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    table = printed.split(f"validation of {ckpt}:")[1]
    names = [line.split()[0] for line in table.strip().splitlines()[1:4]]
    assert names == ["politics", "sport", "all"]
    assert all(line.split()[1] != "nan" for line in table.strip().splitlines()[1:4])
    assert "books" not in table and "cooking" not in table
    assert f"checkpoint: {ckpt}" in printed  # the footer names the validated checkpoint


def test_prepare_help_gives_each_knob_its_own_text_and_shows_zero_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    helps = {}
    for knob in ("knn_k", "knn_trees", "knn_search_k", "seed"):
        after = text.rsplit(f"--{knob} {knob.upper()}", 1)[1]  # the help entry, not the usage line
        helps[knob] = after.split(" --", 1)[0]
    assert len(set(helps.values())) == 4
    assert "default: 0)" in helps["seed"] and "default: -1)" in helps["knn_search_k"]
    assert "--config" in text and "--print_config" in text


def printed_config(capsys, *argv) -> dict:
    with pytest.raises(SystemExit) as done:
        main(list(argv) + ["--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_prepare_config_files_override_left_to_right_as_fit_does(tmp_path, capsys):
    from conftest import make_corpus

    inputs = [str(p) for p in make_corpus(tmp_path / "in")]
    path = tmp_path / "prep.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "o"), "inputs": inputs, "seq_len": 64,
                                    "vocab_size": 400, "sequences_per_shard": 4}))
    after = printed_config(capsys, "prepare", "--config", str(path), "--seq_len", "32")
    assert after["seq_len"] == 32 and after["vocab_size"] == 400 and after["inputs"] == inputs
    before = printed_config(capsys, "prepare", "--seq_len", "32", "--config", str(path))
    assert before["seq_len"] == 64  # the file, given later, wins: as `lory fit --x 1 --config F` does
    # what --print_config prints is a config file that gives the same settings back
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(after))
    assert printed_config(capsys, "prepare", "--config", str(tmp_path / "printed.yaml")) == after
    assert main(["prepare", "--config", str(path), "--quiet"]) == 0
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["seq_len"] == 64
    path.write_text(yaml.safe_dump({"output": "x", "seq_lenn": 3}))
    with pytest.raises(SystemExit) as done:
        main(["prepare", "--config", str(path)])
    assert done.value.code == 2 and "seq_lenn" in capsys.readouterr().err


def test_interpolation_and_base_work_in_every_commands_config_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LORY_TEST_ROOT", str(tmp_path))
    (tmp_path / "base.yaml").write_text("seq_len: 128\nknn_k: 7\n")
    (tmp_path / "prep.yaml").write_text("base: base.yaml\nvocab_size: 300\n"
                                        "output: ${oc.env:LORY_TEST_ROOT}/data-${vocab_size}\n")
    printed = printed_config(capsys, "prepare", "--config", str(tmp_path / "prep.yaml"))
    assert printed["output"] == f"{tmp_path}/data-300" and (printed["seq_len"], printed["knn_k"]) == (128, 7)
    (tmp_path / "gen.yaml").write_text("ckpt_path: ${oc.env:LORY_TEST_ROOT}/last.ckpt\nprompt: oven\n")
    printed = printed_config(capsys, "generate", "--config", str(tmp_path / "gen.yaml"), "--top_k", "3")
    assert printed["ckpt_path"] == f"{tmp_path}/last.ckpt" and printed["top_k"] == 3


def test_the_shipped_evaluation_groups_are_a_config_file_of_lory_evaluate():
    from lory_lightning.cli import EvaluateArgs, TaskGroup, build_parser, parsed

    _, values = parsed(build_parser(), ["evaluate", "--ckpt_path", "c", "--config",
                                        str(ROOT / "configs" / "eval" / "paper-downstream.yaml")])
    args = EvaluateArgs(**{**values, "groups": [TaskGroup(**g) for g in values["groups"]]})
    groups = args.task_groups()
    assert [g.name for g in groups][:2] == ["commonsense reasoning", "reading comprehension"]
    assert groups[0].tasks[0] == "piqa" and groups[2].num_fewshot == 5
    with pytest.raises(ValueError, match="give tasks or groups"):
        EvaluateArgs(ckpt_path="c", tasks="a", groups=groups).task_groups()


def test_the_unigram_column_is_scored_on_the_same_tokens_as_the_model(small_data, tmp_path, capsys):
    import numpy as np

    from lory_lightning.data.manifest import load_manifest
    from lory_lightning.data.shards import ShardReader
    from lory_lightning.data.stream import ValStream

    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]) == 0
    table = capsys.readouterr().out.split("validation after step 2:")[1]
    # limit_val_batches 2 x batch 4: the first 8 held-out sequences; score them by hand
    manifest = load_manifest(small_data)
    counts = np.load(small_data / "unigram.npy")
    logp = np.log(counts / counts.sum())
    nll, n = {}, {}
    for i, ex in enumerate(ValStream(manifest["splits"]["val"]["shards"], 0, 1, ShardReader(str(small_data)))):
        if i == 8:
            break
        for t, d in zip(ex["targets"].tolist(), ex["domains"].tolist()):
            nll[d] = nll.get(d, 0.0) - logp[t]
            n[d] = n.get(d, 0) + 1
    for d, name in enumerate(manifest["domains"]):
        if d in n:
            row = next(line for line in table.splitlines() if line.startswith(name)).split()
            assert float(row[2]) == pytest.approx(np.exp(nll[d] / n[d]), rel=1e-4)
    overall = next(line for line in table.splitlines() if line.startswith("all")).split()
    assert float(overall[2]) == pytest.approx(np.exp(sum(nll.values()) / sum(n.values())), rel=1e-4)


def test_a_corpus_with_one_domain_fits_validates_and_analyzes(tmp_path, capsys):
    # jsonl records without a domain field take the file's name: one domain. torchmetrics returns a
    # one-element result as a 0-d tensor, which crashed fit, validate and analyze.
    import random

    rng = random.Random(0)
    words = "flour butter oven bake sugar whisk dough knead salt pepper".split()
    corpus = tmp_path / "recipes.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(30, 120)))})
                              + "\n" for _ in range(150)))
    data = tmp_path / "data"
    assert main(["prepare", "--output", str(data), "--inputs", str(corpus), "--seq_len", "32", "--vocab_size", "300",
                 "--sequences_per_shard", "4", "--val_fraction", "0.1", "--quiet"]) == 0
    cfg = small_config(tmp_path, data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "8"]) == 0
    ckpt = tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(["validate", "--config", str(cfg), "--ckpt_path", str(ckpt)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("recipes")).split()
    assert float(row[1]) > 1 and float(row[2]) > 1
    assert main(["analyze", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "analysis")]) == 0
    assert "recipes" in capsys.readouterr().out


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "hi", "--ckpt_path"], ["export", "--output", "EXPORT", "--ckpt_path"],
    ["evaluate", "--tasks", "lory_toy_mc", "--ckpt_path"], ["perplexity", "--inputs", "IN", "--ckpt_path"],
    ["analyze", "--ckpt_path"], ["validate", "--config", "configs/lory-tiny.yaml", "--ckpt_path"],
    ["fit", "--config", "configs/lory-tiny.yaml", "--model.init_from"],
])
def test_no_command_deletes_a_folder_named_like_a_checkpoint_backup(tmp_path, capsys, command):
    # Given a folder X that is not a checkpoint, no command may touch X.old (how users name a
    # backup) or X.lory-old without the swap's mark: X is refused with one line, the rest stays.
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    for name in ("last.ckpt.old", "last.ckpt.lory-old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "thesis.tex").write_text("precious")
    args = [str(tmp_path / "export") if a == "EXPORT" else str(tmp_path / "in.txt") if a == "IN" else a
            for a in command]
    (tmp_path / "in.txt").write_text("some text to score " * 20)
    assert main([*args, str(folder), *(["--trainer.max_steps", "1"] if command[0] == "fit" else [])]) != 0
    for name in ("last.ckpt.old", "last.ckpt.lory-old"):
        assert (tmp_path / name / "thesis.tex").read_text() == "precious", name


def test_resume_last_leaves_a_backup_of_last_ckpt_alone(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2"]) == 0
    checkpoints = tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints"
    backup = checkpoints / "last.ckpt.old"
    backup.mkdir()
    (backup / "notes.txt").write_text("my backup")
    assert main(["fit", "--config", str(cfg), "--ckpt_path", "last", "--trainer.max_steps", "4"]) == 0
    assert (backup / "notes.txt").read_text() == "my backup"


def test_data_tokenized_by_another_tokenizer_of_the_same_size_is_refused(small_data, tmp_path, capsys):
    # Same vocabulary size, other tokenizer (trained on other text): validate, analyze and a
    # resumed fit all ran and scored other tokens; now each stops with one line naming both.
    from conftest import make_corpus
    from lory_lightning.data.manifest import load_manifest
    from lory_lightning.data.prepare import PrepareConfig, prepare

    other = tmp_path / "other"
    inputs = [str(p) for p in make_corpus(tmp_path / "in", docs_per_domain=60, seed=7)]
    prepare(PrepareConfig(output=str(other), inputs=inputs, seq_len=32, vocab_size=300, sequences_per_shard=4,
                          val_fraction=0.1), quiet=True)
    assert load_manifest(other)["vocab_size"] == load_manifest(small_data)["vocab_size"]
    assert load_manifest(other)["tokenizer"]["sha256"] != load_manifest(small_data)["tokenizer"]["sha256"]
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2"]) == 0
    ckpt = str(tmp_path / "runs" / "lory-tiny" / "version_0" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    for args in (["validate", "--config", str(cfg), "--ckpt_path", ckpt, "--data.data_dir", str(other)],
                 ["fit", "--config", str(cfg), "--ckpt_path", ckpt, "--data.data_dir", str(other),
                  "--trainer.max_steps", "4"],
                 ["analyze", "--ckpt_path", ckpt, "--data", str(other), "--output", str(tmp_path / "a")]):
        assert main(args) == 1, args[0]
        err = capsys.readouterr().err.strip().splitlines()
        assert f"{other} was tokenized by another tokenizer (sha256 " in err[-1], (args[0], err[-3:])
        assert f"than checkpoint {ckpt} (sha256 " in err[-1]
    # a tokenizer.json replaced after preparing is named by the manifest's record
    (other / "tokenizer.json").write_bytes((small_data / "tokenizer.json").read_bytes())
    assert main(["analyze", "--ckpt_path", ckpt, "--data", str(other), "--output", str(tmp_path / "a")]) == 1
    assert "differs from manifest.json's" in capsys.readouterr().err


def test_the_last_step_is_validated_and_checkpointed_when_max_steps_is_not_a_validation_step(small_data, tmp_path,
                                                                                               capsys):
    # max_steps 6, validation every 4: the run used to end with last.ckpt and the table of step 4,
    # printed as "validation after step 6".
    from lory_lightning.checkpoint_io import read_checkpoint_meta

    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--trainer.val_check_interval", "4"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "lory-tiny" / "version_0"
    assert read_checkpoint_meta(run / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert [int(r["step"]) for r in metrics(run) if r.get("val/ppl")] == [3, 5]  # after steps 4 and 6 (0-based)
    def table(text, title):
        lines = text[text.index(title):].splitlines()[1:]
        return lines[:next(i for i, line in enumerate(lines) if line.startswith("checkpoint:"))]

    final = table(out, "validation after step 6:")
    assert any(line.startswith("all") for line in final)
    assert main(["validate", "--config", str(cfg), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    again = capsys.readouterr().out
    assert table(again, "validation of") == final  # the table printed is the checkpoint's


def test_validate_last_reads_the_run_and_writes_nothing_into_it(small_data, tmp_path, capsys):
    # `lory validate --ckpt_path last` used to trim the run's metrics.csv at the checkpoint's step,
    # append a step-0 row and overwrite its config.yaml and hparams.yaml.
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "4"]) == 0
    runs = tmp_path / "runs" / "lory-tiny"
    before = {p: p.read_bytes() for p in (runs / "version_0").rglob("*") if p.is_file()}
    assert main(["validate", "--config", str(cfg), "--ckpt_path", "last"]) == 0
    assert "validation of " + str(runs / "version_0" / "checkpoints" / "last.ckpt") in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (runs / "version_0").rglob("*") if p.is_file()} == before
    assert (runs / "version_1" / "metrics.csv").is_file()  # its own logs: a new version folder


def test_fit_takes_prepare_settings_as_the_typed_section_a_prepare_config_file_is(small_data, tmp_path, capsys):
    from lory_lightning.data.datamodule import LoryDataModule

    cfg = small_config(tmp_path, small_data)
    prep = tmp_path / "prep.yaml"
    prep.write_text("dedup_threshold: 0.95\nworkers: 2\nknn_k: 7\n")
    printed = printed_config(capsys, "fit", "--config", str(cfg), "--data.prepare", str(prep))
    section = printed["data"]["init_args"]["prepare"] if "init_args" in printed["data"] else printed["data"]["prepare"]
    assert (section["dedup_threshold"], section["workers"], section["knn_k"]) == (0.95, 2, 7)
    with pytest.raises(SystemExit) as done:  # a misspelled key fails the parse, as anywhere in the config
        main(["fit", "--config", str(cfg), "--data.prepare.knn_kk", "3", "--print_config"])
    assert done.value.code == 2
    dm = LoryDataModule(data_dir=str(tmp_path / "d"), order="random", seed=3, seq_len=32,
                        prepare={"knn_k": 7, "seed": 3, "seq_len": 512})  # stated keys: defaults or agreeing
    assert (dm.prepare_config.knn_k, dm.prepare_config.order, dm.prepare_config.seq_len,
            dm.prepare_config.output) == (7, "random", 32, str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"data.prepare.order is 'random', data.order is 'similarity': set it once"):
        LoryDataModule(data_dir=str(tmp_path / "d"), prepare={"order": "random"})
    old = yaml.safe_load(cfg.read_text())
    old["data"]["prepare_args"] = {"knn_k": 7}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert main(["fit", "--config", str(tmp_path / "old.yaml")]) == 1
    assert "data.prepare_args is now data.prepare" in capsys.readouterr().err
