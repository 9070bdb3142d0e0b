#!/usr/bin/env python3
"""The paper's Table 3 in one call: training-step time of Lory with 8, 16 and 32 experts against dense,
with the torch path and the fused Triton kernels, eager and compiled, beside each step's roofline floor.

    python benchmarks/table3.py --out benchmarks/table3.md --json benchmarks/table3.json   # on a GPU
    python benchmarks/table3.py --device cpu --dtype fp32 --dim 32 ...  # any size (the suite runs a tiny one)

The model is the paper's 0.3B shape (d 1024, 16 heads, f 2816, 24 layers, segments of 256 in
sequences of 4096, 8 sequences a step, a 32k vocabulary). An expert count whose fp32 weights,
gradients and Adam state (16 bytes a parameter) would exceed ``--state_fraction`` of the device's
memory at 24 layers runs with the most layers, in steps of 4, that keep under it (32 experts on a
141 GB GPU: 16 layers), with a dense model of the same depth timed beside it for its ratio. The
layer count of every row is in the table.

Each Lory row is one kernel (``model.kernel``: torch or triton) in one mode (eager or every block
compiled, as ``model.compile: true`` does), and its ratio divides by dense in the same mode at the
same depth: eager against eager, compiled against compiled. A step is forward, backward and a fused
AdamW update under bf16 autocast (fp32 weights). Variants are timed one at a time (one model on the
device at once), in passes of alternating order after warm-up steps; the table gives the mean of
the passes and their spread, and ``--json`` writes every step's time. The roofline columns
(benchmarks/roofline.py) give the FLOPs and bytes each step must move and the time they imply at
the chip's peaks; the targets are the ones this project set for the fused kernels.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import roofline
from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.model.config import training_flops_per_token
from lory_lightning.model.fused import INTERPRET, TRITON
from lory_lightning.model.transformer import compile_blocks
from lory_lightning.optim import param_groups

PAPER_RATIO = {8: 1.18, 16: 1.27, 32: 1.39}  # LORY.md, Table 3: step time of Lory E / dense (A100)
TARGET_RATIO = {8: 1.10, 16: 1.15, 32: 1.25}  # the fused kernels' targets (H200, bf16, 24 layers)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    cfg: ModelConfig
    kernel: str  # torch or triton ("-" for dense)
    compiled: bool

    @property
    def dense_name(self) -> str:
        return f"dense_{self.cfg.n_layer}l" + ("_compiled" if self.compiled else "")


def device_memory(device: torch.device) -> float | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def layers_that_fit(cfg: ModelConfig, memory: float | None, fraction: float) -> int:
    """The most layers (the requested count, else a multiple of 4) whose training state fits."""
    if memory is None:
        return cfg.n_layer
    for layers in [cfg.n_layer, *range(cfg.n_layer - cfg.n_layer % 4 or cfg.n_layer - 4, 0, -4)]:
        if 16 * roofline.parameters(cfg.replace(n_layer=layers)) <= fraction * memory:
            return layers
    return 1


def variants(args: argparse.Namespace, device: torch.device) -> list[Variant]:
    base = ModelConfig(vocab_size=args.vocab, seq_len=args.seq_len, segment_len=args.segment_len,
                       n_layer=args.n_layer, n_head=args.n_head, dim=args.dim, hidden_dim=args.hidden,
                       ffn="lory", num_experts=max(args.experts))
    memory = device_memory(device)
    out: list[Variant] = []
    for compiled in [mode == "compiled" for mode in args.modes]:
        suffix = "_compiled" if compiled else ""
        for e in args.experts:
            cfg = base.replace(num_experts=e)
            cfg = cfg.replace(n_layer=layers_that_fit(cfg, memory, args.state_fraction))
            dense = Variant(f"dense_{cfg.n_layer}l{suffix}", cfg.replace(ffn="dense", kernel="torch"), "-", compiled)
            if dense.name not in {v.name for v in out}:  # one dense row per depth and mode
                out.append(dense)
            out += [Variant(f"lory_{e}e_{cfg.n_layer}l_{k}{suffix}", cfg.replace(kernel=k), k, compiled)
                    for k in args.kernels]
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


def time_variant(v: Variant, args: argparse.Namespace, device: torch.device) -> dict:
    """Every timed step's seconds (after ``args.warmup``), their mean, and peak memory."""
    step, cleanup = build_step(v.cfg, args, device, v.compiled)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        steps.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    cleanup()
    return {"s": sum(steps) / len(steps), "steps": steps, "peak_gib": peak}


def peaks(device: torch.device, args: argparse.Namespace) -> tuple[float | None, float | None]:
    """The chip's dense bf16 FLOP/s and memory bytes/s (given, or known by name)."""
    known = (None, None)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = next((v for k, v in roofline.PEAKS.items() if k in name), known)
    flops = args.peak_tflops * 1e12 if args.peak_tflops else (known[0] if args.dtype == "bf16" else None)
    bandwidth = args.peak_gbps * 1e9 if args.peak_gbps else known[1]
    return flops, bandwidth


def table(vs: list[Variant], runs: dict[str, list[dict]], args: argparse.Namespace,
          peak_flops: float | None, peak_bytes: float | None) -> tuple[list[str], dict[str, dict]]:
    tokens = args.batch * args.seq_len
    mean = {v.name: sum(r["s"] for r in runs[v.name]) / len(runs[v.name]) for v in vs}
    torch_peak = {(v.cfg.num_experts, v.cfg.n_layer, v.compiled): max(r["peak_gib"] or 0 for r in runs[v.name])
                  for v in vs if v.kernel == "torch"}
    lines = ["| variant | layers | kernel | mode | step (ms) | pass spread | tokens/s | peak memory (GiB) | MFU | "
             "step x dense | paper | target | FLOP floor | floor (ms) | step x floor |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    rows = {}
    for v in vs:
        s, times = mean[v.name], [r["s"] for r in runs[v.name]]
        dense_cfg = v.cfg.replace(ffn="dense")
        flops = roofline.step_flops(v.cfg, args.batch)
        nbytes = roofline.step_bytes(v.cfg, args.batch, v.kernel, 2 if args.dtype == "bf16" else 4)
        floor = roofline.floor_seconds(flops, sum(nbytes.values()), peak_flops, peak_bytes) \
            if peak_flops and peak_bytes else None
        ratio = s / mean[v.dense_name]
        lory = v.cfg.ffn == "lory"
        target, verdict = TARGET_RATIO.get(v.cfg.num_experts), "-"
        if lory and v.kernel == "triton" and target:
            verdict = f"<= {target:.2f}: {'met' if ratio <= target else 'missed'}"
            mem, ref = max(r["peak_gib"] or 0 for r in runs[v.name]), torch_peak.get(
                (v.cfg.num_experts, v.cfg.n_layer, v.compiled))
            if ref and mem > ref:
                verdict += f"; memory {mem:.1f} > torch's {ref:.1f} GiB"
        memory = max((r["peak_gib"] for r in runs[v.name] if r["peak_gib"] is not None), default=None)
        paper = f"{PAPER_RATIO[v.cfg.num_experts]:.2f}" if lory and v.cfg.num_experts in PAPER_RATIO else "-"
        lines.append(
            f"| {v.name} | {v.cfg.n_layer} | {v.kernel} | {'compiled' if v.compiled else 'eager'} | {s * 1e3:.1f} | "
            f"{(max(times) - min(times)) / s:.1%} | {tokens / s:,.0f} | {'n/a' if memory is None else f'{memory:.1f}'} | "
            f"{f'{flops / s / peak_flops:.1%}' if peak_flops else 'n/a'} | {ratio:.3f} | {paper if lory else '-'} | "
            f"{verdict} | {training_flops_per_token(v.cfg) / training_flops_per_token(dense_cfg):.3f} | "
            f"{'n/a' if floor is None else f'{floor * 1e3:.3g}'} | {'n/a' if floor is None else f'{s / floor:.2f}'} |")
        rows[v.name] = {"layers": v.cfg.n_layer, "experts": v.cfg.num_experts if lory else 0, "kernel": v.kernel,
                        "compiled": v.compiled, "step_s": s, "x_dense": ratio, "flops": flops, "bytes": nbytes,
                        "floor_s": floor, "peak_gib": memory}
    return lines, rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--n_head", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2816)
    parser.add_argument("--n_layer", type=int, default=24)
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--segment_len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--kernels", nargs="+", choices=["torch", "triton"],
                        help="default: both where the fused kernels can run (CUDA with Triton, or the interpreter)")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    parser.add_argument("--state_fraction", type=float, default=0.55,
                        help="most of the device's memory that weights, gradients and Adam state may take")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--passes", type=int, default=2, help="each pass times every variant; orders alternate")
    parser.add_argument("--peak_tflops", type=float, help="the chip's dense peak FLOP/s (known: H100, H200, A100)")
    parser.add_argument("--peak_gbps", type=float, help="the chip's memory bandwidth in GB/s (known: as above)")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--json", help="also write every step's time and the roofline numbers here")
    args = parser.parse_args(argv)
    if args.kernels is None:
        fused_runs = TRITON and (args.device.startswith("cuda") or INTERPRET)
        args.kernels = ["torch", "triton"] if fused_runs else ["torch"]
    return args


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs on a GPU use its tensor cores, as training would
    vs = variants(args, device)
    runs: dict[str, list[dict]] = {v.name: [] for v in vs}
    start = time.perf_counter()
    for p in range(args.passes):
        for v in (vs if p % 2 == 0 else list(reversed(vs))):
            runs[v.name].append(time_variant(v, args, device))
            print(f"pass {p + 1} {v.name}: {runs[v.name][-1]['s'] * 1e3:.1f} ms/step", flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak_flops, peak_bytes = peaks(device, args)
    header = (f"{where}, torch {torch.__version__}, {args.dtype}; d {args.dim}, {args.n_head} heads, f {args.hidden}, "
              f"L {args.seq_len}, T {args.segment_len}, {args.batch} sequences a step, vocabulary {args.vocab}; "
              f"{args.warmup} warm-up + {args.steps} timed steps per variant, {args.passes} passes; "
              f"{time.perf_counter() - start:.0f} s in all. Peaks: "
              f"{'n/a' if not peak_flops else f'{peak_flops / 1e12:.0f} TFLOP/s'}, "
              f"{'n/a' if not peak_bytes else f'{peak_bytes / 1e12:.2f} TB/s'}.")
    lines, rows = table(vs, runs, args, peak_flops, peak_bytes)
    print("\n".join([header, "", *lines]))
    if args.out:
        Path(args.out).write_text("\n".join([header, "", *lines]) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "args": vars(args), "rows": rows, "runs": runs},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
