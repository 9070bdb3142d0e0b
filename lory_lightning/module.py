"""LoryLM: the LightningModule that trains a LoryTransformer (the loss, the optimizer and schedule, the
upcycling step, per-domain validation metrics)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from .callbacks.guard import NonFiniteGuard
from .data.manifest import TOKENIZER
from .checkpoint_io import check_same_tokenizer, first_line, load_checkpoint, model_state, rng_state, set_rng_state
from .metrics import DomainPerplexity, perplexity_metrics
from .model import LoryTransformer, ModelConfig, load_balancing_loss, router_z_loss
from .model.baselines import AuxFreeTopKMoE
from .model.config import training_flops_per_token
from .model.remoe import adapt_l1_coef, gate_sparsity, remoe_l1_loss, target_sparsity
from .model.transformer import compile_blocks
from .model.upcycle import (in_dense_phase, router_generator, start_dense_phase, upcycle_model_and_optimizer,
                            upcycle_state_dict)
from .optim import OptimConfig, lr_multiplier, param_groups
from .training import TrainingConfig


class LoryLM(L.LightningModule):
    """Pre-trains a Lory (or dense) decoder with LM cross-entropy.

    Args:
        arch: The decoder's architecture (``ffn: lory``, ``dense`` or a baseline; ModelConfig):
            ``--model.arch.num_experts 16``. ``vocab_size`` and ``seq_len`` are linked with the data
            by the CLI.
        optim: AdamW + cosine schedule settings.
        training: Dense warmup and upcycling, router losses, and what a non-finite step does.
        init_from: A checkpoint to start from: a dense LoryLM checkpoint is upcycled into this
            routed model; one of the same architecture is loaded as is. ``hf:FOLDER`` (or a FOLDER
            holding a config.json): a saved Hugging Face Llama-architecture model (the ``hf`` extra),
            upcycled likewise; `lory fit` reads its shape into ``arch`` from its config.json.
        compile: Compile each decoder block with ``torch.compile`` (once, when the run starts; the
            first step then takes longer while it compiles). BENCHMARKS.md has the speed and memory
            it was measured to give.
    """

    def __init__(self, arch: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(),
                 training: TrainingConfig = TrainingConfig(), init_from: str | None = None,
                 compile: bool = False) -> None:
        super().__init__()
        model = ModelConfig(**arch) if isinstance(arch, dict) else arch
        optim = OptimConfig(**optim) if isinstance(optim, dict) else optim
        training = TrainingConfig(**training) if isinstance(training, dict) else training
        training.check(model)
        # Plain data only, so checkpoints load with weights_only=True.
        self.save_hyperparameters({"arch": dataclasses.asdict(model), "optim": dataclasses.asdict(optim),
                                   "training": dataclasses.asdict(training), "init_from": init_from,
                                   "compile": compile})
        self.config, self.optim, self.training_config = model, optim, training
        self.compile_blocks = compile
        self.last_loss: torch.Tensor | None = None  # the step's loss, read by the NonFiniteGuard
        self.model = LoryTransformer(model)
        if init_from:
            self._init_from(init_from)
        elif training.dense_warmup:
            start_dense_phase(self.model)
        self.domains: list[str] = []
        self.val_ppl: DomainPerplexity | None = None
        self.val_unigram: DomainPerplexity | None = None
        self.unigram_logp: torch.Tensor | None = None
        self.tokens_seen = 0
        self.remoe_l1_coef = training.remoe_l1_init  # ReMoE's lambda, moved each step (model/remoe.py)
        self.flops_per_batch: float | None = None  # read by Lightning's ThroughputMonitor
        self._flops_per_token = training_flops_per_token(model)  # a constant of the config: counted once

    def _init_from(self, path: str) -> None:
        from .hf_import import hf_folder

        folder = hf_folder(path)
        if folder is not None:  # a saved Hugging Face Llama-architecture model (hf_import.py)
            from .hf_import import check_shape, read_hf_dense

            shape, state = read_hf_dense(folder, self.config.seq_len)
            check_shape(shape, self.config, str(folder))
        else:
            state = model_state(load_checkpoint(path))
        is_dense = not any(k.endswith("router.weight") for k in state)
        if is_dense and self.config.is_moe:
            state = upcycle_state_dict(state, self.config, router_generator(step=0))
        try:
            self.model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"model.init_from {path}: weights do not fit this model config: "
                             f"{first_line(err)}") from err
        rank_zero_info(f"initialized from {path}" + (" (dense, upcycled into experts)" if is_dense else ""))

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        manifest = getattr(dm, "manifest", None)
        if manifest is None:
            return
        init_from = self.hparams.get("init_from")
        if init_from and getattr(dm, "data_dir", None):
            from .hf_import import check_tokenizer, hf_folder

            folder = hf_folder(init_from)
            if folder is not None:
                check_tokenizer(folder, Path(dm.data_dir) / TOKENIZER)
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

    def configure_model(self) -> None:
        # Blocks are compiled in place (state-dict keys unchanged), before sharding as torchtitan
        # does; then a sharded strategy (strategies.LoryFSDPStrategy) shards the model, once the
        # process group exists. Under any other strategy the model stays as built. Idempotent:
        # Lightning calls this hook again for each trainer.fit / validate.
        if self.compile_blocks:
            compile_blocks(self.model)
        parallelize = getattr(self.trainer.strategy, "parallelize", None)
        if parallelize is not None:
            parallelize(self.model)

    def configure_callbacks(self) -> list[L.Callback]:
        # The guard is part of training, not an option of the run config: it is always there.
        return [NonFiniteGuard(self.training_config.nonfinite)]

    def configure_optimizers(self) -> dict[str, Any]:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            raise ValueError("set trainer.max_steps: the cosine schedule and dense_warmup are sized by it")
        opt = torch.optim.AdamW(param_groups(self.model, self.optim.weight_decay), lr=self.optim.lr,
                                betas=self.optim.betas, eps=self.optim.eps,
                                **self.optim.adamw_kwargs(self.trainer.precision))
        warmup = int(round(self.optim.warmup_fraction * max_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_multiplier(step, max_steps, warmup, self.optim.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ training

    @property
    def upcycle_step(self) -> int | None:
        return None if self.trainer is None else self.training_config.upcycle_step(self.trainer.max_steps)

    def in_dense_phase(self) -> bool:
        return in_dense_phase(self.model)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.upcycle_step is not None and self.global_step >= self.upcycle_step and self.in_dense_phase():
            self.upcycle_now()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The last step is always validated, and so checkpointed (ModelCheckpoint saves last.ckpt
        # after each validation): a stop requested here makes Lightning validate this step. Left
        # alone, a max_steps that is not a multiple of val_check_interval ended with a checkpoint
        # and a table of an earlier step, printed as the last one.
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    def _remoe_l1(self, routing: Any) -> torch.Tensor:
        """ReMoE's penalty lambda_i * L_reg for this step, then lambda_{i+1} from the step's sparsity,
        averaged over ranks so every rank keeps the same lambda (model/remoe.py)."""
        reg = remoe_l1_loss(routing, self.config.top_k)
        sparsity = float(self.trainer.strategy.reduce(gate_sparsity(routing).to(self.device), reduce_op="mean"))
        coef = self.remoe_l1_coef
        self.remoe_l1_coef = adapt_l1_coef(coef, sparsity, target_sparsity(self.config.top_k, self.config.num_experts),
                                           self.training_config.remoe_l1_alpha)
        self.log_dict({"train/remoe_l1": reg.detach(), "train/sparsity": sparsity, "train/remoe_l1_coef": coef})
        return coef * reg

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Auxiliary-loss-free balancing: each layer's bias moves on the step's token counts, summed
        # over ranks (and over the micro-batches of an accumulated step), so every rank moves alike.
        for layer in self.model.modules():
            if isinstance(layer, AuxFreeTopKMoE):
                load = self.trainer.strategy.reduce(layer.take_load(), reduce_op="sum")
                layer.update_balance_bias(load, self.training_config.balance_bias_rate)

    def upcycle_now(self) -> None:
        """End the dense warmup (model/upcycle.py): experts from the dense FFN, fresh routers drawn alike
        on every rank, the dense FFN's Adam moments for every expert."""
        upcycle_model_and_optimizer(self.model, self.trainer.optimizers, self.global_step,
                                    self.training_config.upcycle_moments)
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
        coefs = self.training_config
        if coefs.load_balance_coef:
            balance = load_balancing_loss(routing)
            loss = loss + coefs.load_balance_coef * balance
            self.log("train/load_balance", balance)
        if coefs.z_loss_coef:
            z = router_z_loss(routing)
            loss = loss + coefs.z_loss_coef * z
            self.log("train/z_loss", z)
        if self.config.ffn == "remoe":
            loss = loss + self._remoe_l1(routing)
        self.last_loss = loss.detach()
        self.log("train/loss", lm_loss, prog_bar=True)
        # The rate this step's optimizer update uses: the scheduler moves it after the update.
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        tokens = batch["targets"].numel()  # this rank's
        self.flops_per_batch = self._flops_per_token * tokens
        self.tokens_seen += tokens * self.trainer.world_size
        self.log("train/tokens", float(self.tokens_seen))
        # Routing goes out with the step's outputs: monitoring callbacks read it in on_train_batch_end.
        return {"loss": loss, "routing": tuple(None if r is None else r._replace(
            logits=r.logits.detach(), weights=r.weights.detach()) for r in routing)}

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
        checkpoint["rng"] = rng_state()
        checkpoint["tokens_seen"] = self.tokens_seen
        if self.config.ffn == "remoe":
            checkpoint["remoe_l1_coef"] = self.remoe_l1_coef  # training state: a resume continues the control
        checkpoint["domains"] = list(self.domains)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "tokenizer_json"):
            checkpoint["tokenizer"] = dm.tokenizer_json  # `lory generate` needs nothing but the checkpoint
            checkpoint["tokenizer_sha256"] = hashlib.sha256(checkpoint["tokenizer"].encode("utf-8")).hexdigest()
        manifest = getattr(dm, "manifest", None) if dm is not None else None
        if manifest and "eod_id" in manifest:
            checkpoint["eod_id"] = int(manifest["eod_id"])  # the tokenizer's own end-of-text token

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resumed or validated on a data folder: its tokenizer must be the checkpoint's (fit would
        # otherwise write the folder's into the next checkpoint, and validate would score other tokens).
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(dm, "manifest", None):
            check_same_tokenizer(checkpoint, self.trainer.ckpt_path or "(--ckpt_path)", dm.data_dir, dm.manifest)
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self.remoe_l1_coef = float(checkpoint.get("remoe_l1_coef", self.training_config.remoe_l1_init))
        # The data's own domain names win (setup() reads them from its manifest): a checkpoint
        # validated on another corpus must report that corpus's domains, not map them by index.
        if not self.domains:
            self.domains = list(checkpoint.get("domains", []))
