"""What a run prints at its start and while it trains: no "Epoch 0/-2", no Lightning tips, no false
"will be deleted" warning, no "Total FLOPs: 0"; the model's own counts, tokens/s and the learning rate."""

import warnings
from types import SimpleNamespace

import pytest

from lory_lightning.callbacks.progress import (LoryRichProgressBar, LoryTQDMProgressBar, StepRate, step_metrics,
                                               train_description)
from lory_lightning.cli import main
from test_cli_lightning import small_config


def test_the_step_rate_counts_tokens_over_its_window():
    rate = StepRate(window=2)
    assert rate.rate() is None
    for t in range(5):  # 100 tokens a batch, one batch every 0.5 s
        rate.add(100, now=0.5 * t)
    assert rate.rate() == pytest.approx(200.0)  # over the last 2 batches: 200 tokens in 1 s


def test_the_bar_shows_the_learning_rate_tokens_per_second_and_the_step_to_reach():
    rate = StepRate()
    trainer = SimpleNamespace(optimizers=[SimpleNamespace(param_groups=[{"lr": 3e-4}])], max_steps=400)
    assert step_metrics(trainer, rate) == {"lr": "3.00e-04"}
    rate.add(4096, now=0.0)
    rate.add(4096, now=2.0)
    assert step_metrics(trainer, rate) == {"lr": "3.00e-04", "tok/s": "2,048"}
    assert train_description(trainer) == "step (to 400)"


def test_a_run_starts_without_lightnings_noise(small_data, tmp_path, capsys, caplog):
    cfg = small_config(tmp_path, small_data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(cfg), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                     "--trainer.enable_model_summary", "true", "--trainer.enable_progress_bar", "true"]) == 0
    out, err = capsys.readouterr()
    printed = out + err + caplog.text + "\n".join(str(w.message) for w in caught)
    for noise in ("Tip:", "will be deleted", "Total FLOPs", "Epoch 0/-2", "LeafSpec"):
        assert noise not in printed, noise
    # the summary states the model's own counts
    assert "params:   0.1M in all" in out and "per training token" in out and "lory decoder, 2 layers" in out


def test_a_bar_a_config_names_is_kept(small_data, tmp_path):
    from lory_lightning.lightning_cli import use_lory_summary_and_bar
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    trainer = SimpleNamespace(callbacks=[RichProgressBar(), TQDMProgressBar(refresh_rate=5)])
    use_lory_summary_and_bar(trainer, {"TQDMProgressBar"})
    assert isinstance(trainer.callbacks[0], LoryRichProgressBar)
    assert type(trainer.callbacks[1]) is TQDMProgressBar and trainer.callbacks[1].refresh_rate == 5
    assert not isinstance(trainer.callbacks[1], LoryTQDMProgressBar)
