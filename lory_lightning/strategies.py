"""Sharded training for Lory: FSDP2 (torch ``fully_shard``) through Lightning's ModelParallelStrategy,
configurable from YAML, with atomic sharded checkpoints that load without running pickle.

Every process is one data-parallel rank holding 1/N of every parameter; each decoder block (its
attention and all its experts) is one shard unit, all-gathered only while it runs. FSDP2 rather than
FSDP1: it shards each parameter as a DTensor (so upcycling and the optimizer state see plain tensor
shapes), runs on CPU processes over gloo (the tests run it), and is what torchtitan and Lightning
recommend.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from .atomic import new_folder, replace_folder
from .checkpoint_io import load_sharded_state, read_checkpoint_meta
from .model.transformer import Block, LoryTransformer


class LoryFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over all processes (``num_nodes`` x ``devices``), each ``Block`` one shard unit.

    LoryLM.configure_model calls ``parallelize`` on its LoryTransformer; nothing else changes.

    Args:
        checkpoint_blocks: Recompute each block's activations in backward (activation checkpointing).
        reshard_after_forward: Free each block's gathered parameters after its forward and gather
            them again for backward (ZeRO-3, least memory); False keeps them to backward (ZeRO-2,
            one all-gather fewer per block).
        save_distributed_checkpoint: True: checkpoints are folders with one file of shards per rank
            (no rank ever holds the whole model); False: one file, gathered on rank 0.
        process_group_backend: ``nccl`` on GPUs and ``gloo`` on CPU by default.
        timeout: For the collective operations.
    """

    def __init__(self, checkpoint_blocks: bool = False, reshard_after_forward: bool = True,
                 save_distributed_checkpoint: bool = True, process_group_backend: str | None = None,
                 timeout: timedelta | None = timedelta(minutes=30)) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.checkpoint_blocks = checkpoint_blocks
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # Lightning's "auto" makes one data-parallel rank per node and tensor parallelism inside it;
        # pure FSDP is data-parallel over every process.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def parallelize(self, model: LoryTransformer) -> None:
        """Shard ``model`` in place: every block, then the rest (embeddings, final norm, head)."""
        shard_blocks(model, self.device_mesh["data_parallel"], self.checkpoint_blocks, self.reshard_after_forward)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Sharded checkpoints are written whole or not at all: every rank writes into ``NAME.tmp``,
        then rank 0 swaps it in for ``NAME`` (atomic.replace_folder). Killed mid-save, the old
        checkpoint stays (or is put back by the next reader)."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.global_rank == 0:
            new_folder(tmp)  # a killed save's leftover goes; a folder of anyone else's is refused
        self.barrier("lory_ckpt_tmp_clear")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("lory_ckpt_written")
        if self.global_rank == 0:
            replace_folder(tmp, path)
        self.barrier("lory_ckpt_swapped")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume from a sharded folder (each rank reads its shards, with the checkpoint's own
        metadata read without running pickle) or from a one-file checkpoint (Lightning's path)."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():
            return super().load_checkpoint(path, weights_only=True)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict, set_optimizer_state_dict)

        module = self.model
        meta = read_checkpoint_meta(path)
        state = {"state_dict": get_model_state_dict(module)}
        load_sharded_state(state, path)
        module.load_state_dict(state["state_dict"], strict=self.lightning_module.strict_loading)
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optim_state = {key: get_optimizer_state_dict(module, optimizer)}
            load_sharded_state(optim_state, path)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state[key],
                                     options=StateDictOptions(cpu_offload=True))
        return meta


def shard_blocks(model: nn.Module, mesh: Any, checkpoint_blocks: bool = False,
                 reshard_after_forward: bool = True) -> None:
    """FSDP2 on ``model``: each ``Block`` its own unit (gathered only while it runs), the root the rest.

    Parameters become DTensors sharded along their first dimension (for expert weights (E, ...):
    by expert), so the same module and optimizer objects train on, and upcycling copies into shards
    in place (model/upcycle.py). Calling it again on a sharded model does nothing.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        if checkpoint_blocks:
            block.gradient_checkpointing = True
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)

