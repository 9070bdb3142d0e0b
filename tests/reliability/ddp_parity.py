"""Train the same 20 steps with 1 or 2 CPU processes at the same global batch, then validate; save the
final weights, the logged gradient norms and the per-domain validation perplexities.

    python ddp_parity.py STRATEGY DEVICES OUT.pt [NAN_STEP NAN_RANK]

STRATEGY: ``single`` (one process), ``ddp``, or ``fsdp``: the strategy section of the shipped
configs/lory-1.5b-32e-fsdp.yaml, as it is there. NAN_STEP/NAN_RANK: that rank's gradients are NaN at
that step (with ``nonfinite: skip``), to check that every rank skips it.
"""

import sys
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader, Dataset, Subset

from lory_lightning.callbacks.guard import NonFiniteGuard
from lory_lightning.model import ModelConfig
from lory_lightning.module import LoryLM
from lory_lightning.optim import OptimConfig
from lory_lightning.training import TrainingConfig

GLOBAL_BATCH, STEPS, VAL_SEQUENCES = 8, 20, 16
FSDP_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "lory-1.5b-32e-fsdp.yaml"


class Fixed(Dataset):
    """Random token sequences; sequence i is from domain i % 2."""

    def __init__(self, n: int, seed: int) -> None:
        self.tokens = torch.randint(0, 64, (n, 33), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        t = self.tokens[i]
        return {"input_ids": t[:-1], "targets": t[1:], "domains": torch.full((32,), i % 2, dtype=torch.long)}


class FixedData(L.LightningDataModule):
    """Rank r takes samples r, r + world, ...: the union of the ranks' k-th batches is the 1-process k-th batch."""

    manifest = {"vocab_size": 64, "seq_len": 32, "domains": ["even", "odd"]}

    def _loader(self, data: Dataset, batch: int) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return DataLoader(Subset(data, range(rank, len(data), world)), batch_size=batch // world)

    def train_dataloader(self) -> DataLoader:
        return self._loader(Fixed(GLOBAL_BATCH * STEPS, 1), GLOBAL_BATCH)

    def val_dataloader(self) -> DataLoader:
        return self._loader(Fixed(VAL_SEQUENCES, 2), 4)


class GradNorms(L.Callback):
    """Keeps the guard's logged global gradient norm of every step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        self.norms.append(float(trainer.callback_metrics["train/grad_norm"]))


class NanGradOnRank(L.Callback):
    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_after_backward(self, trainer, pl_module):  # noqa: ANN001
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            grad = next(p.grad for p in pl_module.parameters() if p.grad is not None)
            local = grad.to_local() if hasattr(grad, "to_local") else grad
            local.view(-1)[0] = torch.nan


def shipped_fsdp_strategy() -> L.pytorch.strategies.Strategy:
    """The strategy section of the shipped FSDP config, instantiated as LightningCLI does."""
    section = yaml.safe_load(FSDP_CONFIG.read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.pytorch.strategies.Strategy, "strategy")
    return parser.instantiate(parser.parse_object({"strategy": section})).strategy


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights (every rank takes part in gathering the DTensors)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in model.state_dict().items()}


def main() -> None:
    kind, devices, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    nan = [int(x) for x in sys.argv[4:6]]
    torch.set_num_threads(1)
    L.seed_everything(0)
    cfg = ModelConfig(vocab_size=64, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=32, hidden_dim=48,
                      num_experts=4)
    model = LoryLM(arch=cfg, optim=OptimConfig(lr=1e-3),
                   training=TrainingConfig(dense_warmup=0.2, nonfinite="skip" if nan else "stop"))
    strategy = {"single": "auto", "ddp": "ddp", "fsdp": None}[kind] or shipped_fsdp_strategy()
    norms = GradNorms()
    callbacks = [norms] + ([NanGradOnRank(*nan)] if nan else [])
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, gradient_clip_val=1.0, use_distributed_sampler=False,
                        callbacks=callbacks)
    data = FixedData()
    trainer.fit(model, datamodule=data)
    weights = full_state(model.model)
    skipped = next(c.skipped_steps for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    trainer.limit_val_batches = 1.0
    trainer.validate(model, datamodule=data, verbose=False)
    ppl = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and k.endswith("ppl")}
    if kind == "fsdp":  # a sharded checkpoint, for the consolidation test
        trainer.save_checkpoint(Path(out).with_suffix(".ckpt"))
    if trainer.global_rank == 0:
        torch.save({"weights": weights, "grad_norms": norms.norms, "val_ppl": ppl,
                    "skipped": skipped}, out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a gloo group left to interpreter exit can abort


if __name__ == "__main__":
    main()
