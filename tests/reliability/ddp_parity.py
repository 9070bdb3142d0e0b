"""Train the same 20 steps with 1 or 2 CPU processes at the same global batch; save the final weights.

    python ddp_parity.py DEVICES OUT.pt
"""

import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lory_lightning.model import ModelConfig
from lory_lightning.training import TrainingConfig
from lory_lightning.module import LoryLM
from lory_lightning.optim import OptimConfig

GLOBAL_BATCH, STEPS = 8, 20


class Fixed(Dataset):
    def __init__(self) -> None:
        self.tokens = torch.randint(0, 64, (GLOBAL_BATCH * STEPS, 33), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        t = self.tokens[i]
        return {"input_ids": t[:-1], "targets": t[1:], "domains": torch.zeros(32, dtype=torch.long)}


class FixedData(L.LightningDataModule):
    """Rank r takes samples r, r + world, ...: the union of the ranks' k-th batches is the 1-process k-th batch."""

    def train_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        data = Fixed()
        return DataLoader(Subset(data, range(rank, len(data), world)), batch_size=GLOBAL_BATCH // world)


def main() -> None:
    devices, out = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    L.seed_everything(0)
    cfg = ModelConfig(vocab_size=64, seq_len=32, segment_len=8, n_layer=2, n_head=2, dim=32, hidden_dim=48,
                      num_experts=4)
    model = LoryLM(model=cfg, optim=OptimConfig(lr=1e-3), training=TrainingConfig(dense_warmup=0.2))
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
                        use_distributed_sampler=False)
    trainer.fit(model, datamodule=FixedData())
    if trainer.global_rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.model.state_dict().items()}, out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a gloo group left to interpreter exit can abort


if __name__ == "__main__":
    main()
