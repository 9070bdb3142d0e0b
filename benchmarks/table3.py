#!/usr/bin/env python3
"""The paper's Table 3 in one call: training-step time of Lory with 8, 16 and 32 experts against dense.

    python benchmarks/table3.py --device cuda --dtype bf16            # the 0.3B width, 8 layers
    python benchmarks/table3.py --device cpu --dtype fp32 --dim 32 ...  # any size (the suite runs a tiny one)

Each variant (dense, Lory with each expert count, and Lory with the fewest experts without merge
recomputation) is the same decoder at the paper's 0.3B width
(d 1024, 16 heads, f 2816, segments of 256 in sequences of 4096, 8 sequences a step, a 32k
vocabulary) with fewer layers (8 by default: the 32-expert model's weights, gradients and Adam
state at 24 layers would not fit beside its activations on one 141 GB GPU; the ratio to dense is
per layer, so the layer count barely moves it). A step is forward, backward and a fused AdamW update
under bf16 autocast (fp32 weights). Variants are timed one at a time (one model on the device at
once), in two passes in opposite orders, after warm-up steps; the table gives the mean of the passes
and their spread. MFU divides the model's training FLOPs per token (model/config.py, the count
Lightning's ThroughputMonitor gets) by the step time and the chip's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.model.config import training_flops_per_token
from lory_lightning.model.transformer import compile_blocks
from lory_lightning.optim import param_groups

PAPER_RATIO = {8: 1.18, 16: 1.27, 32: 1.39}  # LORY.md, Table 3: step time of Lory E / dense
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # datasheet dense (no sparsity) FLOP/s


def peak_flops(device: torch.device, dtype: str, given_tflops: float | None) -> float | None:
    if given_tflops:
        return given_tflops * 1e12
    if device.type != "cuda" or dtype != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DENSE_BF16_PEAK.items() if k in name), None)


def variants(args: argparse.Namespace) -> dict[str, ModelConfig]:
    base = ModelConfig(vocab_size=args.vocab, seq_len=args.seq_len, segment_len=args.segment_len,
                       n_layer=args.n_layer, n_head=args.n_head, dim=args.dim, hidden_dim=args.hidden,
                       ffn="lory", num_experts=max(args.experts))
    out = {"dense": base.replace(ffn="dense")}
    out.update({f"lory_{e}e": base.replace(num_experts=e) for e in args.experts})
    # The default Lory layer recomputes its merges in backward to save activation memory
    # (model/merged_swiglu.py); the plain one lets autograd keep them: its speed, for the fewest experts.
    e = min(args.experts)
    out[f"lory_{e}e_plain"] = base.replace(num_experts=e, recompute_merge=False)
    if args.compile:  # model.compile: every block through torch.compile
        out["dense_compiled"] = out["dense"]
        out[f"lory_{e}e_compiled"] = out[f"lory_{e}e"]
    return out


def build_step(cfg: ModelConfig, args: argparse.Namespace, device: torch.device,  # noqa: ANN201
               compiled: bool = False):
    """One training step of a fresh ``cfg`` model as a closure, and a function that frees the model."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LoryTransformer(cfg)
    if compiled:
        compile_blocks(model)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, **fused)
    idx = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len + 1), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step() -> None:
        with autocast:
            logits = model(idx[:, :-1]).logits  # (B, L, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def cleanup() -> None:
        nonlocal model, opt
        del model, opt
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    return step, cleanup


def time_variant(cfg: ModelConfig, args: argparse.Namespace, device: torch.device,
                 compiled: bool = False) -> dict[str, float]:
    """Seconds per training step (mean of ``args.steps`` after ``args.warmup``) and peak memory."""
    step, cleanup = build_step(cfg, args, device, compiled)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    cleanup()
    return {"s": seconds, "peak_gib": peak}


def table(cfgs: dict[str, ModelConfig], runs: dict[str, list[dict]], args: argparse.Namespace,
          peak: float | None) -> list[str]:
    tokens = args.batch * args.seq_len
    dense_s = sum(r["s"] for r in runs["dense"]) / len(runs["dense"])
    dense_flops = training_flops_per_token(cfgs["dense"])
    lines = ["| variant | step (ms) | pass spread | tokens/s | peak memory (GiB) | MFU | step x dense | "
             "paper's step x dense | FLOP floor |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, cfg in cfgs.items():
        s = sum(r["s"] for r in runs[name]) / len(runs[name])
        spread = (max(r["s"] for r in runs[name]) - min(r["s"] for r in runs[name])) / s
        flops = training_flops_per_token(cfg)
        mfu = f"{flops * tokens / s / peak:.1%}" if peak else "n/a"
        paper = f"{PAPER_RATIO[cfg.num_experts]:.2f}" if cfg.ffn == "lory" and cfg.num_experts in PAPER_RATIO \
            and cfg.recompute_merge and not name.endswith("_compiled") else "-"
        memory = max(r["peak_gib"] for r in runs[name])
        lines.append(f"| {name} | {s * 1e3:.1f} | {spread:.1%} | {tokens / s:,.0f} | "
                     f"{'n/a' if memory != memory else f'{memory:.1f}'} | {mfu} | {s / dense_s:.3f} | {paper} | "
                     f"{flops / dense_flops:.3f} |")
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--n_head", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2816)
    parser.add_argument("--n_layer", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--segment_len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--passes", type=int, default=2, help="each pass times every variant; orders alternate")
    parser.add_argument("--compile", action="store_true", help="also time dense and the fewest experts compiled")
    parser.add_argument("--peak_tflops", type=float, help="the chip's dense peak for MFU (known: H100, H200, A100)")
    parser.add_argument("--out", help="also write the markdown table here")
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs on a GPU use its tensor cores, as training would
    cfgs = variants(args)
    runs: dict[str, list[dict]] = {name: [] for name in cfgs}
    start = time.perf_counter()
    for p in range(args.passes):
        for name in (list(cfgs) if p % 2 == 0 else list(reversed(cfgs))):
            runs[name].append(time_variant(cfgs[name], args, device, name.endswith("_compiled")))
            print(f"pass {p + 1} {name}: {runs[name][-1]['s'] * 1e3:.1f} ms/step", flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"{where}, torch {torch.__version__}, {args.dtype}; d {args.dim}, {args.n_head} heads, f {args.hidden}, "
              f"{args.n_layer} layers, L {args.seq_len}, T {args.segment_len}, {args.batch} sequences a step, "
              f"vocabulary {args.vocab}; {args.warmup} warm-up + {args.steps} timed steps per variant, "
              f"{args.passes} passes; {time.perf_counter() - start:.0f} s in all.")
    lines = [header, ""] + table(cfgs, runs, args, peak_flops(device, args.dtype, args.peak_tflops))
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
