"""Sharded checkpoint folders in one process: the atomic folder swap and its recovery, consolidation,
what a tampered folder can and cannot do, and upcycling of parameters sharded by FSDP2 (a 1-rank
process group; the 2-process runs are in test_fsdp.py)."""

import os
import pickle
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from lory_lightning.atomic import SWAP_MARK, new_folder, recover_folder, replace_folder
from lory_lightning.checkpoint_io import (META_FILE, load_checkpoint, load_sharded_state, model_state,
                                          read_checkpoint_meta)
from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.model.upcycle import start_dense_phase, upcycle_model_and_optimizer

CFG = ModelConfig(vocab_size=64, seq_len=16, segment_len=4, n_layer=2, n_head=2, dim=16, hidden_dim=24, num_experts=4)


def write_folder(path: Path, weights: dict, extra: dict | None = None, meta: dict | None = None) -> Path:
    """A sharded checkpoint folder as LoryFSDPStrategy writes it (one rank here)."""
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"state_dict": {f"model.{k}": v for k, v in weights.items()}, **(extra or {})},
                 checkpoint_id=path, no_dist=True)
    torch.save(meta if meta is not None else {"global_step": 7, "hyper_parameters": {"model": CFG.__dict__}},
               path / META_FILE)
    return path


def test_a_folder_consolidates_to_the_weights_and_metadata_saved(tmp_path):
    model = LoryTransformer(CFG)
    folder = write_folder(tmp_path / "last.ckpt", model.state_dict(),
                          extra={"optimizer_0": {"state": {"w": torch.ones(3)}, "param_groups": [{"lr": 0.1}]}})
    ckpt = load_checkpoint(folder)
    assert ckpt["global_step"] == 7
    state = model_state(ckpt)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert read_checkpoint_meta(folder)["global_step"] == 7  # the metadata alone, no weights read


def test_a_folder_without_its_index_or_metadata_is_named(tmp_path):
    folder = write_folder(tmp_path / "last.ckpt", {"w": torch.ones(2)})
    (folder / ".metadata").unlink()
    with pytest.raises(ValueError, match=r"last.ckpt: not a sharded checkpoint folder \(no .metadata\)"):
        load_checkpoint(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: not a sharded checkpoint folder \(no meta.pt or .metadata\)"):
        read_checkpoint_meta(empty)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_tampered_index_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_folder(tmp_path / "last.ckpt", {"w": torch.ones(2)})
    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=r"\.metadata: refused to load the checkpoint index: posix.system is not part"):
        load_checkpoint(folder)
    assert not (tmp_path / "PWNED").exists()


def test_a_pickled_entry_is_refused_on_a_sharded_resume(tmp_path, monkeypatch):
    # Entries that are not tensors (optimizer param groups) are read back with weights_only=True:
    # DCP's own planner would unpickle them with weights_only=False.
    monkeypatch.chdir(tmp_path)
    dcp.save({"groups": {"evil": Payload()}}, checkpoint_id=tmp_path / "f", no_dist=True)
    with pytest.raises(ValueError, match=r"f: refused to load: an entry holds objects other than tensors"):
        load_sharded_state({"groups": {"evil": None}}, tmp_path / "f", whole=True)
    assert not (tmp_path / "PWNED").exists()
    dcp.save({"groups": {"lr": 0.5, "betas": (0.9, 0.95)}}, checkpoint_id=tmp_path / "g", no_dist=True)
    state = {"groups": {"lr": None, "betas": None}}
    load_sharded_state(state, tmp_path / "g", whole=True)
    assert state == {"groups": {"lr": 0.5, "betas": (0.9, 0.95)}}


def test_a_missing_shard_file_is_named(tmp_path):
    folder = write_folder(tmp_path / "last.ckpt", {"w": torch.ones(2)})
    next(folder.glob("*.distcp")).unlink()
    with pytest.raises(ValueError, match=r"last.ckpt: not a readable sharded checkpoint \(a missing or damaged shard"):
        load_checkpoint(folder)


def test_replace_folder_swaps_whole_folders_and_a_killed_swap_recovers(tmp_path):
    path = tmp_path / "last.ckpt"
    path.mkdir()
    (path / "a").write_text("old")
    new = new_folder(tmp_path / "last.ckpt.tmp")
    (new / "a").write_text("new")
    replace_folder(new, path)
    assert (path / "a").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    # killed between the two renames: only last.ckpt.lory-old (whole, marked) is left; readers put it back
    assert not (path / SWAP_MARK).exists()  # in place, a checkpoint holds only its own files
    old = tmp_path / "last.ckpt.lory-old"
    (path / SWAP_MARK).touch()  # what replace_folder does before its first rename
    os.replace(path, old)
    recover_folder(path)
    assert (path / "a").read_text() == "new" and not old.exists()
    # killed after the second rename, before the old folder was deleted: the new folder stays
    old.mkdir()
    (old / SWAP_MARK).touch()
    recover_folder(path)
    assert (path / "a").read_text() == "new" and not old.exists()
    recover_folder(tmp_path / "absent")  # nothing to do
    assert not (tmp_path / "absent").exists()


def test_a_users_backup_beside_a_checkpoint_is_never_deleted(tmp_path):
    # `cp -r last.ckpt last.ckpt.old` is how a user names a backup; neither it nor a folder of the
    # swap's own name without the swap's mark is ever taken for a swap's leftover.
    path = tmp_path / "last.ckpt"
    path.mkdir()
    for name in ("last.ckpt.old", "last.ckpt.lory-old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "thesis.tex").write_text("precious")
    recover_folder(path)
    with pytest.raises(FileExistsError, match="last.ckpt.lory-old: a folder that lory did not write"):
        replace_folder(new_folder(tmp_path / "new"), path)
    assert path.is_dir() and (tmp_path / "new").is_dir()  # refused before either rename
    (tmp_path / "last.ckpt.tmp").mkdir()
    (tmp_path / "last.ckpt.tmp" / "notes").write_text("mine")
    with pytest.raises(FileExistsError, match="a folder that lory did not write"):
        new_folder(tmp_path / "last.ckpt.tmp")
    for name in ("last.ckpt.old", "last.ckpt.lory-old"):
        assert (tmp_path / name / "thesis.tex").read_text() == "precious"
    assert (tmp_path / "last.ckpt.tmp" / "notes").read_text() == "mine"


def test_the_cli_finds_a_sharded_last_checkpoint_even_mid_swap(tmp_path):
    from lory_lightning.lightning_cli import resolve_last
    from jsonargparse import Namespace

    checkpoints = tmp_path / "runs" / "x" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    old = write_folder(checkpoints / "last.ckpt.lory-old", {"w": torch.ones(2)}, meta={"global_step": 5})
    (old / SWAP_MARK).touch()  # what a swap killed between its renames leaves
    logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                       init_args=Namespace(save_dir=str(tmp_path / "runs"), name="x", version=None))
    path, (folder, step) = resolve_last(Namespace(logger=[logger]))
    assert Path(path) == checkpoints / "last.ckpt" and Path(path).is_dir() and step == 5


@pytest.fixture
def one_rank_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield dist.device_mesh.init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_upcycling_a_sharded_model_equals_upcycling_it_whole(one_rank_group):
    from torch.distributed.tensor import DTensor

    from lory_lightning.strategies import shard_blocks

    torch.manual_seed(1)
    whole = LoryTransformer(CFG)
    start_dense_phase(whole)
    sharded = LoryTransformer(CFG)
    sharded.load_state_dict(whole.state_dict())
    shard_blocks(sharded, one_rank_group)
    assert isinstance(sharded.blocks[0].ffn.w_up, DTensor)
    shard_blocks(sharded, one_rank_group)  # a second call (configure_model again) changes nothing
    x = torch.randint(0, 64, (2, 16))
    optimizers = []
    for model in (whole, sharded):  # one dense-phase Adam step each, so there are moments to carry
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(x).logits.square().mean().backward()
        opt.step()
        optimizers.append(opt)
    for model, opt in zip((whole, sharded), optimizers):
        upcycle_model_and_optimizer(model, [opt], step=3)

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    for (name, a), b in zip(whole.named_parameters(), sharded.parameters()):
        assert torch.equal(a, full(b)), name
        sa, sb = optimizers[0].state.get(a, {}), optimizers[1].state.get(b, {})
        assert sa.keys() == sb.keys(), name  # routers start afresh in both
        for key in sa:
            assert torch.equal(full(sa[key]), full(sb[key])), (name, key)
    w = whole.blocks[1].ffn.w_gate
    assert torch.equal(w[3], w[0])  # every expert is expert 0
