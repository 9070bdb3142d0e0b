"""LoryLM: the LightningModule that trains a LoryTransformer (loss, optimizer, schedule, upcycling, metrics)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from .checkpoint_io import load_checkpoint, model_state
from .metrics import DomainPerplexity, perplexity_metrics
from .model import LoryTransformer, ModelConfig, load_balancing_loss, router_z_loss, upcycle_state_dict
from .optim import OptimConfig, lr_multiplier, param_groups, upcycle_optimizer_state


def router_generator(step: int) -> torch.Generator:
    """The generator fresh routers are drawn from at upcycling: the run's seed (``seed_everything``)
    plus the step, so every rank draws the same routers and a rerun the same ones."""
    return torch.Generator().manual_seed(torch.initial_seed() % 2 ** 63 + step)


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient norm with ``nonfinite: stop``."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain data and tensors (loadable with weights_only=True)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LoryLM(L.LightningModule):
    """Pre-trains a Lory (or dense) decoder with LM cross-entropy.

    Args:
        model: The decoder (``ffn: lory`` or ``dense``). ``vocab_size`` and ``seq_len`` are linked
            with the data by the CLI.
        optim: AdamW + cosine schedule settings.
        dense_warmup: Share of ``trainer.max_steps`` trained as the dense model before upcycling
            into experts (paper: 0.05; 0 starts as Lory). Only for ``ffn: lory``.
        init_from: A checkpoint to start from: a dense LoryLM checkpoint is upcycled into this
            Lory model; one of the same architecture is loaded as is.
        load_balance_coef: Weight of the Switch load-balancing loss (paper: 0, off).
        z_loss_coef: Weight of the router z-loss (paper: 0, off).
        nonfinite: What a non-finite loss or gradient norm does: ``stop`` the run with a message,
            or ``skip`` the optimizer step (counted as ``train/skipped_steps``). Decided on a flag
            reduced over all ranks, so every rank does the same.
        upcycle_moments: At the end of the dense warmup every expert inherits the dense FFN's Adam
            moments, ``scaled`` to the 1/E share of the gradient each expert then gets, or ``copied``
            unscaled (which damps expert updates for ~100 steps; see REPLICATION.md).
    """

    def __init__(self, model: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(),
                 dense_warmup: float = 0.0, init_from: str | None = None,
                 load_balance_coef: float = 0.0, z_loss_coef: float = 0.0,
                 nonfinite: Literal["stop", "skip"] = "stop",
                 upcycle_moments: Literal["scaled", "copied"] = "scaled") -> None:
        super().__init__()
        if isinstance(model, dict):
            model = ModelConfig(**model)
        if isinstance(optim, dict):
            optim = OptimConfig(**optim)
        if not 0.0 <= dense_warmup < 1.0:
            raise ValueError(f"model.dense_warmup is a share of max_steps in [0, 1), got {dense_warmup}")
        if dense_warmup and model.ffn not in ("lory", "lory_prefix"):
            raise ValueError(f"model.dense_warmup needs model.ffn: lory or lory_prefix, got {model.ffn!r} (the "
                             "baselines start from a dense model with model.init_from instead)")
        if (load_balance_coef or z_loss_coef) and not model.is_moe:
            raise ValueError("router losses (load_balance_coef, z_loss_coef) need routed experts, not ffn: dense")
        # Plain data only, so checkpoints load with weights_only=True.
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"model.nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
        if upcycle_moments not in ("scaled", "copied"):
            raise ValueError(f"model.upcycle_moments must be 'scaled' or 'copied', got {upcycle_moments!r}")
        self.save_hyperparameters({"model": dataclasses.asdict(model), "optim": dataclasses.asdict(optim),
                                   "dense_warmup": dense_warmup, "init_from": init_from,
                                   "load_balance_coef": load_balance_coef, "z_loss_coef": z_loss_coef,
                                   "nonfinite": nonfinite, "upcycle_moments": upcycle_moments})
        self.nonfinite, self.upcycle_moments = nonfinite, upcycle_moments
        self.skipped_steps = 0
        self._last_loss: torch.Tensor | None = None
        self.config, self.optim = model, optim
        self.dense_warmup, self.load_balance_coef, self.z_loss_coef = dense_warmup, load_balance_coef, z_loss_coef
        self.model = LoryTransformer(model)
        if init_from:
            self._init_from(init_from)
        elif dense_warmup:
            for layer in self.model.moe_layers():
                layer.set_dense_phase(True)
        self.domains: list[str] = []
        self.val_ppl: DomainPerplexity | None = None
        self.val_unigram: DomainPerplexity | None = None
        self.unigram_logp: torch.Tensor | None = None
        self.tokens_seen = 0
        self._step_start: float | None = None

    def _init_from(self, path: str) -> None:
        state = model_state(load_checkpoint(path))
        is_dense = not any(k.endswith("router.weight") for k in state)
        if is_dense and self.config.is_moe:
            state = upcycle_state_dict(state, self.config,
                                       router_generator(step=0))
        try:
            self.model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"model.init_from {path}: weights do not fit this model config: "
                             f"{str(err).splitlines()[0]}") from err
        rank_zero_info(f"initialized from {path}" + (" (dense, upcycled into experts)" if is_dense else ""))

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        manifest = getattr(dm, "manifest", None)
        if manifest is None:
            return
        if manifest["vocab_size"] > self.config.vocab_size:
            raise ValueError(f"the tokenizer has {manifest['vocab_size']} tokens, model.vocab_size is "
                             f"{self.config.vocab_size}: raise model vocab_size (or data.vocab_size)")
        if manifest["seq_len"] != self.config.seq_len:
            raise ValueError(f"data holds sequences of {manifest['seq_len']}, model.seq_len is {self.config.seq_len}")
        self.domains = list(manifest["domains"])
        if self.val_ppl is None or self.val_ppl.num_domains != len(self.domains):
            self.val_ppl = DomainPerplexity(len(self.domains)).to(self.device)
        # The unigram baseline, scored on exactly the tokens each validation covers (the table's
        # second column); None for data prepared without unigram.npy.
        logp = dm.unigram_log_probs() if hasattr(dm, "unigram_log_probs") else None
        self.unigram_logp = None if logp is None else logp.to(self.device)
        self.val_unigram = None if logp is None else DomainPerplexity(len(self.domains)).to(self.device)

    def configure_optimizers(self) -> dict[str, Any]:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            raise ValueError("set trainer.max_steps: the cosine schedule and dense_warmup are sized by it")
        opt = torch.optim.AdamW(param_groups(self.model, self.optim.weight_decay), lr=self.optim.lr,
                                betas=self.optim.betas, eps=self.optim.eps)
        warmup = int(round(self.optim.warmup_fraction * max_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_multiplier(step, max_steps, warmup, self.optim.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ training

    @property
    def upcycle_step(self) -> int | None:
        if not self.dense_warmup or self.trainer is None:
            return None
        return int(round(self.dense_warmup * self.trainer.max_steps))

    def in_dense_phase(self) -> bool:
        return any(layer.is_dense for layer in self.model.moe_layers())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.upcycle_step is not None and self.global_step >= self.upcycle_step and self.in_dense_phase():
            self.upcycle_now()
        self._step_start = time.perf_counter()

    @torch.no_grad()
    def upcycle_now(self) -> None:
        """End the dense warmup: copy each FFN into every expert, fresh routers, expert 0's Adam moments."""
        # The same generator state on every rank, so all ranks draw the same routers.
        gen = router_generator(self.global_step)
        layers = self.model.moe_layers()
        for layer in layers:
            layer.upcycle_from_first_expert(self.config.router_init_std, gen)
        for opt in self.trainer.optimizers:
            upcycle_optimizer_state(opt, [w for l in layers for w in (l.w_gate, l.w_up, l.w_down)],
                                    [l.router.weight for l in layers],
                                    grad_ratio=1.0 / self.config.num_experts if self.upcycle_moments == "scaled" else 1.0)
        rank_zero_info(f"step {self.global_step}: dense warmup over, upcycled into "
                       f"{self.config.num_experts} experts per layer")

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        out = self.model(batch["input_ids"])  # logits (B, L, V)
        nll = F.cross_entropy(out.logits.float().flatten(0, 1), batch["targets"].flatten(),
                              reduction="none").view_as(batch["targets"])  # (B, L)
        return nll, nll.mean(), out.routing

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        _, lm_loss, routing = self._loss(batch)
        loss = lm_loss
        if self.load_balance_coef:
            balance = load_balancing_loss(routing)
            loss = loss + self.load_balance_coef * balance
            self.log("train/load_balance", balance)
        if self.z_loss_coef:
            z = router_z_loss(routing)
            loss = loss + self.z_loss_coef * z
            self.log("train/z_loss", z)
        self._last_loss = loss.detach()
        self.log("train/loss", lm_loss, prog_bar=True)
        # The rate this step's optimizer update uses: the scheduler moves it after the update.
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.tokens_seen += batch["targets"].numel() * self.trainer.world_size
        # Routing goes out with the step's outputs: monitoring callbacks read it in on_train_batch_end.
        return {"loss": loss, "routing": tuple(None if r is None else r._replace(
            logits=r.logits.detach(), weights=r.weights.detach()) for r in routing)}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Guard against a non-finite loss or gradient norm, the same way on every rank."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) \
            if grads else torch.zeros((), device=self.device)
        loss = self._last_loss if self._last_loss is not None else torch.zeros((), device=self.device)
        bad = (~torch.isfinite(loss) | ~torch.isfinite(norm)).float()
        bad = self.trainer.strategy.reduce(bad, reduce_op="sum") if self.trainer.world_size > 1 else bad
        if bad.item() == 0:
            return
        message = (f"non-finite {'loss' if not torch.isfinite(loss) else 'gradient norm'} at step "
                   f"{self.global_step} (loss {loss.item()}, grad norm {norm.item()}) on some rank")
        if self.nonfinite == "stop":
            raise NonFiniteError(f"{message}: stopping. Set model.nonfinite: skip to skip such steps instead")
        for p in self.parameters():
            p.grad = None  # AdamW leaves parameters without gradients untouched: the step is skipped
        self.skipped_steps += 1
        rank_zero_info(f"{message}: step skipped ({self.skipped_steps} so far)")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self._step_start is not None:
            seconds = time.perf_counter() - self._step_start
            tokens = batch["targets"].numel() * self.trainer.world_size
            self.log("train/tokens_per_s", tokens / max(seconds, 1e-9), prog_bar=True)
        self.log("train/tokens", float(self.tokens_seen))

    # ------------------------------------------------------------------ evaluation

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        nll, loss, routing = self._loss(batch)
        if self.val_ppl is None:  # a data module without domains: one domain
            self.domains = ["all"]
            self.val_ppl = DomainPerplexity(1).to(self.device)
        domains = batch["domains"] if len(self.domains) > 1 else torch.zeros_like(batch["domains"])
        self.val_ppl.update(nll.detach(), domains)
        if self.val_unigram is not None:
            self.val_unigram.update(-self.unigram_logp.to(nll.device)[batch["targets"]], domains)  # (B, L)
        return {"loss": loss, "routing": routing}

    def on_validation_epoch_end(self) -> None:
        if self.val_ppl is None:
            return
        metrics = perplexity_metrics(self.val_ppl, self.domains)
        metrics["val/loss"] = metrics["val/ppl"].log()
        if self.val_unigram is not None:
            metrics |= perplexity_metrics(self.val_unigram, self.domains, "unigram_ppl")
            self.val_unigram.reset()
        self.val_ppl.reset()
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key == "val/ppl", sync_dist=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        return self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Per-sequence mean NLL and each Lory layer's routing weights (None for dense layers)."""
        nll, _, routing = self._loss(batch)
        return {"nll": nll.mean(dim=1), "routing": [None if r is None else r.weights for r in routing]}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = rng_state()  # Lightning keeps none; exact resume needs it
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["domains"] = list(self.domains)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "tokenizer_json"):
            checkpoint["tokenizer"] = dm.tokenizer_json  # `lory generate` needs nothing but the checkpoint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        # The data's own domain names win (setup() reads them from its manifest): a checkpoint
        # validated on another corpus must report that corpus's domains, not map them by index.
        if not self.domains:
            self.domains = list(checkpoint.get("domains", []))
