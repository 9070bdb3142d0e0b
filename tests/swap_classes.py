"""Subclasses a user would swap in by class_path (imported by tests/test_cli_paths.py's YAMLs)."""

from lory_lightning.data.datamodule import LoryDataModule
from lory_lightning.module import LoryLM


class LabelledLM(LoryLM):
    """LoryLM with one more init argument, to show the subclass and its arguments were used."""

    def __init__(self, label: str = "none", **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.steps_seen = 0

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.log("train/labelled", float(len(self.label)))


class HalfBatchData(LoryDataModule):
    """A data module that halves the configured batch size."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_size = max(1, self.batch_size // 2)
