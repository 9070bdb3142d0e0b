"""`lory prepare` never deletes what it did not write, locks its folder, repairs damage, and says why in one line."""

import fcntl
import gzip
import json
import os
import shutil
import socket
import threading

import pytest

from conftest import make_corpus
from lory_lightning.cli import main
from lory_lightning.data.prepare import run as prepare_mod
from lory_lightning.data.manifest import ManifestError, load_manifest
from lory_lightning.data.prepare import PrepareConfig, prepare
from lory_lightning.data.shards import verify_shards

SMALL = dict(seq_len=64, vocab_size=400, sequences_per_shard=4, val_fraction=0.1)


@pytest.fixture
def inputs(tmp_path):
    return [str(p) for p in make_corpus(tmp_path / "in")]


def run(args, capsys):
    """`lory prepare ARGS`: (exit status, the last line of stderr)."""
    code = main(["prepare", "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def test_a_folder_prepare_did_not_write_is_refused_and_left_alone(tmp_path, inputs, capsys):
    out = tmp_path / "mine"
    (out / "photos.tar").mkdir(parents=True)
    (out / "photos.tar" / "cat.jpg").write_bytes(b"jpg")
    (out / "backup.tar").write_bytes(b"precious")
    (out / "notes.tmp").write_text("draft")
    code, err = run(["--output", str(out), "--inputs", *inputs, "--seq_len", "64", "--vocab_size", "400"], capsys)
    assert code == 1 and err.startswith("lory prepare: error:") and "not written by `lory prepare`" in err
    assert sorted(p.name for p in out.rglob("*")) == ["backup.tar", "cat.jpg", "notes.tmp", "photos.tar"]
    # --overwrite does not make a stranger's folder prepare's own either
    assert run(["--output", str(out), "--inputs", *inputs, "--overwrite"], capsys)[0] == 1
    assert (out / "backup.tar").read_bytes() == b"precious"


def _a_web_apps_folder(out):
    """The hostile tester's folder: a manifest.json of another program and a _work.tmp of the user's."""
    (out / "_work.tmp").mkdir(parents=True)
    (out / "manifest.json").write_text('{"name": "my web app"}')
    (out / "_work.tmp" / "thesis.tex").write_text("thesis")
    (out / "tokenizer.json").write_text("{}")
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_a_manifest_json_of_another_program_does_not_make_a_folder_prepares_own(tmp_path, inputs, capsys):
    out = tmp_path / "site"
    before = _a_web_apps_folder(out)
    code, err = run(["--output", str(out), "--inputs", *inputs, "--seq_len", "64", "--vocab_size", "400"], capsys)
    assert code == 1 and "was not written by `lory prepare` (no .lory-prepare mark)" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_lory_fit_with_inputs_refuses_another_programs_folder(tmp_path, inputs, capsys):
    out = tmp_path / "site"
    before = _a_web_apps_folder(out)
    code = main(["fit", "--config", "configs/lory-tiny.yaml", "--data.data_dir", str(out), "--data.inputs",
                 json.dumps(inputs), "--trainer.max_steps", "1", "--trainer.logger", "false"])
    assert code == 1 and "not written by `lory prepare`" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_mark_file_prepare_did_not_write_is_refused(tmp_path, inputs, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".lory-prepare").write_text("my own notes")
    code, err = run(["--output", str(out), "--inputs", *inputs], capsys)
    assert code == 1 and "is not prepare's mark" in err
    assert (out / ".lory-prepare").read_text() == "my own notes"


def test_a_waiting_prepare_says_who_holds_the_folder(tmp_path, inputs, capsys):
    # The data module waits (nodes share a folder): it must say for whom, not hang silently.
    out = tmp_path / "o"
    prepare(PrepareConfig(output=str(out), inputs=inputs, **SMALL), quiet=True)
    mark = out / ".lory-prepare"
    holder = {"pid": 4242, "host": "node7", "since": "2026-12-02 10:00:00 UTC"}
    mark.write_text(json.dumps({"written_by": "lory prepare", "format": 1, "holder": holder}))
    fd = os.open(mark, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a stopped prepare holding the lock
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (prepare(PrepareConfig(output=str(out), inputs=inputs, **SMALL),
                                                      quiet=True, wait=True), done.set()))
    waiter.start()
    said = ""
    try:
        for _ in range(600):  # the message comes before the wait: poll for it, no sleep decides the test
            said += capsys.readouterr().err
            if "waiting for" in said or done.is_set():
                break
            threading.Event().wait(0.05)
        assert not done.is_set()
        assert f"waiting for {out}: another `lory prepare` is writing it (pid 4242 on node7, since 2026-12-02" in said
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        waiter.join(60)
    assert done.is_set()


def test_rebuilding_deletes_only_the_files_prepare_writes(tmp_path, inputs):
    out = tmp_path / "o"
    prepare(PrepareConfig(output=str(out), inputs=inputs, **SMALL), quiet=True)
    (out / "backup.tar").write_bytes(b"precious")  # a user's files put into prepare's folder later
    (out / "photos.tar").mkdir()
    (out / "photos.tar" / "cat.jpg").write_bytes(b"jpg")
    prepare(PrepareConfig(output=str(out), inputs=inputs, **{**SMALL, "seq_len": 32}), quiet=True, overwrite=True)
    assert (out / "backup.tar").read_bytes() == b"precious" and (out / "photos.tar" / "cat.jpg").exists()
    assert load_manifest(out)["seq_len"] == 32


def test_the_data_module_refuses_a_strangers_folder_too(tmp_path, inputs):
    from lory_lightning.data.datamodule import LoryDataModule

    out = tmp_path / "mine"
    out.mkdir()
    (out / "backup.tar").write_bytes(b"precious")
    dm = LoryDataModule(data_dir=str(out), inputs=inputs, seq_len=64, vocab_size=400)
    with pytest.raises(FileExistsError, match="not written by `lory prepare`"):
        dm.prepare_data()
    assert (out / "backup.tar").read_bytes() == b"precious"


def test_a_second_prepare_on_a_locked_folder_exits_with_one_line(tmp_path, inputs, capsys):
    out = tmp_path / "o"
    cfg = PrepareConfig(output=str(out), inputs=inputs, **SMALL)
    # The first run holds the lock while the second starts: the second stops, the first completes.
    real_run = prepare_mod.run_stages
    results = {}

    def first_run(*args, **kwargs):
        results["second"] = run(["--output", str(out), "--inputs", *inputs, "--seq_len", "32", "--vocab_size",
                                 "400", "--overwrite"], capsys)
        return real_run(*args, **kwargs)

    prepare_mod.run_stages = first_run
    try:
        manifest = prepare(cfg, quiet=True)
    finally:
        prepare_mod.run_stages = real_run
    code, err = results["second"]
    assert code == 1 and "being prepared by another process" in err
    assert f"(pid {os.getpid()} on {socket.gethostname()}, since " in err  # who holds it
    assert manifest["seq_len"] == 64
    assert all(not list(verify_shards(out, manifest["splits"][s]["shards"])) for s in ("train", "val"))


def test_up_to_date_verifies_the_shards_and_a_rerun_repairs_them(tmp_path, inputs, capsys):
    out = tmp_path / "o"
    cfg = PrepareConfig(output=str(out), inputs=inputs, **SMALL)
    manifest = prepare(cfg, quiet=True)
    good = (out / "train-00001.tar.gz").read_bytes()
    (out / "train-00001.tar.gz").write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])  # one flipped byte
    (out / "val-00000.tar.gz").unlink()
    capsys.readouterr()
    again = prepare(cfg, quiet=True)
    assert "2 shard(s) fail verification" in capsys.readouterr().err
    assert (out / "train-00001.tar.gz").read_bytes() == good
    assert again["splits"] == manifest["splits"]
    # --overwrite rebuilds even an intact folder
    stamp = (out / "manifest.json").stat().st_mtime_ns
    prepare(cfg, quiet=True, overwrite=True)
    assert (out / "manifest.json").stat().st_mtime_ns != stamp


def test_output_that_is_a_file_or_not_writable_is_one_line(tmp_path, inputs, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = run(["--output", str(a_file), "--inputs", *inputs], capsys)
    assert code == 1 and err == f"lory prepare: error: {a_file}: --output is a file, not a folder: choose a folder path"
    # A folder nobody may create in: chmod for a normal user; /sys refuses even root (CI runs as root).
    import os

    if os.geteuid() == 0:
        target = "/sys/lory-prepare-test"
        expected = "Operation not permitted"
    else:
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        target, expected = str(locked / "sub"), "Permission denied"
    code, err = run(["--output", target, "--inputs", *inputs], capsys)
    assert code == 1 and err == f"lory prepare: error: {target}: {expected}"


def test_a_full_disk_while_writing_shards_names_the_folder(tmp_path, inputs, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    from lory_lightning.data.prepare import stage_write

    monkeypatch.setattr(stage_write, "write_shard", full)
    out = tmp_path / "o"
    code, err = run(["--output", str(out), "--inputs", *inputs, "--seq_len", "64", "--vocab_size", "400"], capsys)
    assert code == 1 and err == f"lory prepare: error: {out}: No space left on device"
    assert not (out / "manifest.json").exists()


def test_a_truncated_gzip_keeps_what_was_read_and_counts_the_loss(tmp_path, capsys):
    paths = make_corpus(tmp_path / "in")
    gz = tmp_path / "in" / "law.jsonl.gz"
    data = gzip.compress(paths[2].read_bytes())
    gz.write_bytes(data[: len(data) // 2])  # cut in the middle of the compressed stream
    paths[2].unlink()
    inputs = [str(p) for p in (paths[0], paths[1], gz)]
    out = tmp_path / "o"
    code, _ = run(["--output", str(out), "--inputs", *inputs, "--seq_len", "64", "--vocab_size", "400"], capsys)
    assert code == 0
    manifest = load_manifest(out)
    skipped = manifest["skipped"]
    assert skipped["by_reason"].get("unreadable_rest_of_file") == 1
    line = next(e for e in skipped["first"] if "unreadable_rest_of_file" in e)
    assert line.startswith(f"{gz}:") and "EOFError" in line and "lines" in line
    law = manifest["counts_by_domain"]["law"]
    assert 0 < law["train_documents"] + law["val_documents"] < 40  # what was read before the cut stays
    code, err = run(["--output", str(tmp_path / "s"), "--inputs", *inputs, "--strict"], capsys)
    assert code == 1 and f"{gz}:" in err and "unreadable_rest_of_file" in err
    gz.write_bytes(b"\x1f\x8b" + b"garbage" * 10)  # not a gzip stream at all
    code, _ = run(["--output", str(tmp_path / "g"), "--inputs", *inputs, "--seq_len", "64", "--vocab_size", "400"],
                  capsys)
    assert code == 0 and load_manifest(tmp_path / "g")["skipped"]["by_reason"]["unreadable_rest_of_file"] == 1


def test_no_validation_text_and_too_little_text_are_refused_in_one_line(tmp_path, inputs, capsys):
    code, err = run(["--output", str(tmp_path / "a"), "--inputs", *inputs, "--val_fraction", "0",
                     "--seq_len", "64", "--vocab_size", "400"], capsys)
    assert code == 1 and "--val_fraction 0.0 of the documents hold(s) no full validation sequence" in err
    assert not (tmp_path / "a" / "manifest.json").exists()
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "just a few words of text here"}) + "\n")
    code, err = run(["--output", str(tmp_path / "b"), "--inputs", str(short), "--seq_len", "64",
                     "--vocab_size", "300"], capsys)
    assert code == 1 and "not one sequence of --seq_len 64" in err


def test_a_given_tokenizer_records_its_own_size(tmp_path, inputs):
    first = prepare(PrepareConfig(output=str(tmp_path / "a"), inputs=inputs, **SMALL), quiet=True)
    second = prepare(PrepareConfig(output=str(tmp_path / "b"), inputs=inputs, tokenizer=str(tmp_path / "a" / "tokenizer.json"),
                                   **{**SMALL, "vocab_size": 8192}), quiet=True)
    assert second["config"]["vocab_size"] == second["vocab_size"] == first["vocab_size"] <= 400


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.pop("splits"), "key 'splits' is missing"),
    (lambda m: m["splits"]["train"]["shards"].pop(1), "splits.train.shards[1].name' is 'train-00002.tar.gz'"),
    (lambda m: m["splits"]["train"]["shards"].pop(), "a shard entry removed?"),
    (lambda m: m["splits"]["val"]["shards"][0].pop("sha256"), "splits.val.shards[0].sha256' is missing"),
    (lambda m: m.update(seq_len="64"), "key 'seq_len' is a str, not a int"),
])
def test_a_hand_edited_manifest_names_the_file_and_the_key(tmp_path, inputs, damage, message):
    out = tmp_path / "o"
    prepare(PrepareConfig(output=str(out), inputs=inputs, **SMALL), quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    damage(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as err:
        load_manifest(out)
    assert str(err.value).startswith(f"{out / 'manifest.json'}: key '") and message in str(err.value)
    assert "rerun `lory prepare" in str(err.value)


def test_a_truncated_manifest_names_the_file(tmp_path, inputs, capsys):
    out = tmp_path / "o"
    prepare(PrepareConfig(output=str(out), inputs=inputs, **SMALL), quiet=True)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ManifestError, match=r"manifest.json: not valid JSON .*truncated or damaged"):
        load_manifest(out)
    shutil.copy(out / "manifest.json", tmp_path / "m.json")
    # prepare itself rebuilds a damaged manifest's folder (its own) rather than stopping
    assert prepare(PrepareConfig(output=str(out), inputs=inputs, **SMALL), quiet=True)["seq_len"] == 64
    assert "not valid JSON" in capsys.readouterr().err


def test_a_folder_of_another_format_is_named_and_rebuilt_by_the_data_module(tmp_path, inputs):
    from lory_lightning.data.datamodule import LoryDataModule

    out = tmp_path / "o"
    prepare(PrepareConfig(output=str(out), inputs=inputs, **SMALL), quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"format_version 1 \(this version of lory reads 2: gzip-compressed "
                                            r".tar.gz shards\); prepare the folder again"):
        load_manifest(out)
    dm = LoryDataModule(data_dir=str(out), inputs=inputs, seq_len=64, vocab_size=400,
                        prepare={"sequences_per_shard": 4, "val_fraction": 0.1})
    dm.prepare_data()
    dm.setup("fit")
    assert load_manifest(out)["format_version"] == 2


def test_prepare_and_perplexity_skip_a_lone_surrogate_and_count_it(tmp_path, inputs, capsys):
    bad = tmp_path / "in" / "bad.jsonl"
    bad.write_text('{"text": "' + "a lone \\ud800 surrogate " * 4 + '", "domain": "cooking"}\n')
    out = tmp_path / "o"
    manifest = prepare(PrepareConfig(output=str(out), inputs=[*inputs, str(bad)], **SMALL), quiet=True)
    assert manifest["skipped"]["by_reason"]["bad_unicode"] == 1
    assert any(f"{bad}:1: bad_unicode" in e for e in manifest["skipped"]["first"])
