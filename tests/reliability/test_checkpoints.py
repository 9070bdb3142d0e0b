"""Checkpoints: atomic writes, a failed save stops the run, truncated or pickled files are refused on resume."""

import pytest
import torch

from lory_lightning.checkpoint_io import save_atomically
from lory_lightning.lightning_cli import SafeCheckpointIO
from lory_lightning.cli import main
from test_cli_lightning import small_config


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # torch.save fails half way through the file


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomically({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomically({"state_dict": {"w": torch.zeros(3)}, "bad": Unpicklable()}, path)
    assert torch.equal(SafeCheckpointIO().load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_failed_save_stops_training(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")
    code = main(["fit", "--config", str(cfg), "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                 f"--trainer.callbacks.dirpath={blocker}", "--trainer.max_steps", "12"])
    assert code == 1
    assert str(blocker) in capsys.readouterr().err


def test_resume_refuses_truncated_and_pickled_checkpoints(small_data, tmp_path, capsys):
    cfg = small_config(tmp_path, small_data)
    assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "8"]) == 0
    good = next((tmp_path / "runs").rglob("last.ckpt"))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    capsys.readouterr()
    assert main(["fit", "--config", str(cfg), "--ckpt_path", str(cut)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lory fit: error:") and "truncated or corrupt" in err[-1]
    evil = tmp_path / "evil.ckpt"
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["payload"] = Unpicklable.__new__(type("Payload", (), {"__reduce__": lambda self: (print, ("ran",))}))
    torch.save(checkpoint, evil)
    assert main(["fit", "--config", str(cfg), "--ckpt_path", str(evil)]) == 1
    captured = capsys.readouterr()
    assert "refused to load" in captured.err and "ran" not in captured.out


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 40], ids=["empty", "random-bytes"])
def test_an_empty_or_random_file_is_a_corrupt_checkpoint_in_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    assert main(["generate", "--ckpt_path", str(bad), "--prompt", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lory generate: error: {bad}: not a readable checkpoint")
    assert "truncated or corrupt" in err[0] and "other than tensors" not in err[0]


def test_a_full_disk_during_a_checkpoint_save_names_the_file(tmp_path, monkeypatch):
    import errno

    def full(obj, f, *args, **kwargs):
        f.write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    path = tmp_path / "last.ckpt"
    with pytest.raises(OSError) as err:
        save_atomically({"w": 1}, path)
    from lory_lightning.errors import one_line

    assert one_line(err.value) == f"{path}: No space left on device"
    assert list(tmp_path.iterdir()) == []
