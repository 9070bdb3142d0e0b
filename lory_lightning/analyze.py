"""`lory analyze`: the domain-specialization report of a trained checkpoint, with no training."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .routing.specialization import SpecializationAccumulator, write_report
from .data.datamodule import folder_unigram_log_probs
from .data.location import check_folder
from .data.shards import ShardReader
from .data.stream import ValStream
from .data.manifest import load_manifest
from .metrics import DomainPerplexity, perplexity_metrics
from .checkpoint_io import check_same_tokenizer, load_model
from .summary import perplexity_table


@torch.no_grad()
def analyze(ckpt_path: str, data: str | None = None, output: str | None = None, batch_size: int = 8,
            max_batches: int | None = None) -> dict:
    """Run the checkpoint over the held-out split of ``data``; write and print the report."""
    model, ckpt = load_model(ckpt_path)
    cfg = model.config
    data_dir = check_folder(data or ckpt.get("datamodule_hyper_parameters", {}).get("data_dir") or "")
    manifest = load_manifest(data_dir)
    check_same_tokenizer(ckpt, ckpt_path, data_dir, manifest)
    if manifest["seq_len"] % cfg.segment_len or manifest["vocab_size"] > cfg.vocab_size:
        raise ValueError(f"{data_dir}: sequences of {manifest['seq_len']} tokens / vocab {manifest['vocab_size']} "
                         f"do not fit the model (segment_len {cfg.segment_len}, vocab_size {cfg.vocab_size})")
    domains = manifest["domains"]
    moe = model.moe_layers()
    if not moe:
        raise ValueError(f"{ckpt_path}: a dense model has no routing to analyze")
    acc = SpecializationAccumulator(len(moe), len(domains), cfg.num_experts, moe[0].segment_len)
    ppl, unigram = DomainPerplexity(len(domains)), DomainPerplexity(len(domains))
    logp = folder_unigram_log_probs(data_dir, manifest)  # the baseline on the same tokens
    val = ValStream(manifest["splits"]["val"]["shards"], 0, 1, ShardReader(data_dir))
    for i, batch in enumerate(DataLoader(val, batch_size=batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        out = model(batch["input_ids"])
        nll = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), batch["targets"].flatten(),
                                                reduction="none").view_as(batch["targets"])
        ppl.update(nll, batch["domains"])
        if logp is not None:
            unigram.update(-logp[batch["targets"]], batch["domains"])
        acc.update(out.routing, batch["domains"])
    out_dir = Path(output) if output else Path(ckpt_path).parent / f"analysis-{Path(ckpt_path).stem}"
    written = write_report(acc, domains, out_dir, "specialization")
    metrics = perplexity_metrics(ppl, domains) | (perplexity_metrics(unigram, domains, "unigram_ppl")
                                                  if logp is not None else {})
    metrics = {k: float(v) for k, v in metrics.items()}
    print(perplexity_table(domains, metrics, manifest.get("baselines", {}).get("unigram_val_ppl")))
    print("\nlayer  I(domain; expert) nats  per-expert domain entropy (0: one domain, 1: all alike)")
    for layer, (mi, ent) in enumerate(zip(written["mutual_information"], written["expert_domain_entropy"])):
        print(f"{layer:>5}  {mi:>23.4f}  " + " ".join(f"{v:.2f}" for v in ent))
    print(f"\nreport: {written['json']}\nheatmaps: {written['layers']}, {written['all_layers']}")
    return {**written, "metrics": metrics}
