#!/usr/bin/env python3
"""One part of the benchmark suite, in one process; `benchmarks/run.py` runs the parts and writes the table.

    python benchmarks/suite.py layer|model|adamw|compile|data --out FILE.json [--rounds 7]

Every variant of a part is timed in the same process, threads pinned, after a warm-up, with the
variants interleaved round by round; the medians are reported as ratios to dense. Saved-activation
bytes are counted exactly with saved-tensor hooks (tensors that are parameters are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lory_lightning.model import LoryTransformer, ModelConfig
from lory_lightning.model.config import training_flops_per_token
from lory_lightning.model.baselines import TopKMoE
from lory_lightning.model.moe import LoryMoE, SwiGLU
from lory_lightning.optim import OptimConfig
from lory_lightning.replication.cost import interleaved_medians, training_step

D, FF = 256, 688  # layer width and FFN width of the layer benchmark


def saved_bytes(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> int:
    ptrs = {p.data_ptr() for p in params}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in ptrs:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def graph_saved_bytes(out: torch.Tensor, params: list[torch.Tensor]) -> int:
    """Bytes the autograd graph behind ``out`` keeps for backward (parameters excluded), each storage
    once. Walks the graph's nodes, so it sees what compiled graphs save too (saved-tensor hooks do
    not reach inside them)."""
    ptrs = {p.data_ptr() for p in params}
    seen: set[tuple[int, int]] = set()
    nodes, stack, total = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in nodes:
            continue
        nodes.add(node)
        tensors = []
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name, None)
                values = value if isinstance(value, (tuple, list)) else [value]
                tensors += [t for t in values if torch.is_tensor(t)]
        if hasattr(node, "saved_tensors"):  # custom and compiled functions
            tensors += [t for t in node.saved_tensors if torch.is_tensor(t)]
        for t in tensors:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if t.data_ptr() not in ptrs and key not in seen:
                seen.add(key)
                total += key[1]
        stack += [n for n, _ in node.next_functions]
    return total


def layer_part(rounds: int) -> list[dict]:
    """FFN layer fwd+bwd: dense, Lory plain, Lory recompute, token top-2 at equal total parameters."""
    rows = []
    tokens = 2 * 2048
    for T in (128, 256):
        for E in (8, 16, 32):
            torch.manual_seed(0)
            x = torch.randn(2, 2048, D, requires_grad=True)
            layers = {"dense": SwiGLU(D, FF), "lory_plain": LoryMoE(D, FF, E, T, recompute_merge=False),
                      "lory_recompute": LoryMoE(D, FF, E, T, recompute_merge=True), "top2": TopKMoE(D, FF, E, 2)}
            layers["lory_recompute"].load_state_dict(layers["lory_plain"].state_dict())

            def step(layer: torch.nn.Module) -> Callable[[], None]:
                def run() -> None:
                    layer.zero_grad(set_to_none=True)
                    x.grad = None
                    layer(x).sum().backward()
                return run

            med = interleaved_medians({k: step(v) for k, v in layers.items()}, rounds)
            mem = {k: saved_bytes(lambda v=v: v(x), list(v.parameters())) for k, v in layers.items()}
            floor = {"dense": 1.0, "lory_plain": 1 + E / T, "lory_recompute": 1 + 4 / 3 * E / T, "top2": 2.0}
            for k in layers:
                rows.append({"T": T, "E": E, "variant": k, "ms": med[k] * 1e3, "time_ratio": med[k] / med["dense"],
                             "floor": floor[k], "saved_MB": mem[k] / 2 ** 20, "saved_ratio": mem[k] / mem["dense"],
                             "tokens": tokens})
            print(f"layer T={T} E={E}: " + ", ".join(f"{k} {med[k] / med['dense']:.3f}x" for k in layers), flush=True)
    return rows


def model_part(rounds: int) -> list[dict]:
    """Whole training step (forward, backward, AdamW) of the tiny decoder: dense, Lory 8E and 32E."""
    base = ModelConfig()  # the tiny model of configs/lory-tiny.yaml
    variants = {"dense": base.replace(ffn="dense"), "lory_8e": base, "lory_8e_plain": base.replace(recompute_merge=False),
                "lory_32e": base.replace(num_experts=32)}
    idx = torch.randint(0, base.vocab_size, (8, base.seq_len + 1), generator=torch.Generator().manual_seed(0))
    # the AdamW kernel LoryLM takes for this precision (fused in fp32)
    steps = {name: training_step(cfg, OptimConfig(), idx) for name, cfg in variants.items()}
    med = interleaved_medians(steps, rounds)
    dense_flops = training_flops_per_token(variants["dense"])
    rows = []
    for name, cfg in variants.items():
        floor = training_flops_per_token(cfg) / dense_flops
        rows.append({"variant": name, "ms": med[name] * 1e3, "time_ratio": med[name] / med["dense"], "floor": floor,
                     "tokens_per_s": 8 * base.seq_len / med[name]})
    print("model: " + ", ".join(f"{r['variant']} {r['time_ratio']:.3f}x" for r in rows), flush=True)
    return rows


def adamw_part(rounds: int) -> list[dict]:
    """The whole training step of the tiny dense and Lory 32E models with each of torch's AdamW kernels."""
    base = ModelConfig()
    idx = torch.randint(0, base.vocab_size, (8, base.seq_len + 1), generator=torch.Generator().manual_seed(0))
    steps, names = {}, []
    for model_name, cfg in {"dense": base.replace(ffn="dense"), "lory_32e": base.replace(num_experts=32)}.items():
        for impl in ("for-loop", "foreach", "fused"):
            steps[f"{model_name} {impl}"] = training_step(cfg, OptimConfig(implementation=impl), idx)
            names.append((model_name, impl))
    med = interleaved_medians(steps, rounds)
    rows = [{"model": m, "adamw": impl, "ms": med[f"{m} {impl}"] * 1e3,
             "time_ratio": med[f"{m} {impl}"] / med["dense for-loop"]} for m, impl in names]
    print("adamw: " + ", ".join(f"{r['model']} {r['adamw']} {r['time_ratio']:.3f}x" for r in rows), flush=True)
    return rows


def compile_part(rounds: int) -> list[dict]:
    """Forward + backward of the tiny dense and Lory 8E models, eager and with compiled blocks
    (``model.compile``): time, and what the graph saves for backward."""
    from lory_lightning.model.transformer import compile_blocks

    base = ModelConfig()
    idx = torch.randint(0, base.vocab_size, (8, base.seq_len + 1), generator=torch.Generator().manual_seed(0))
    models, steps = {}, {}
    for name, cfg in {"dense": base.replace(ffn="dense"), "lory_8e": base}.items():
        for compiled in (False, True):
            torch.manual_seed(0)
            model = LoryTransformer(cfg)
            if compiled:
                compile_blocks(model)
            key = f"{name} {'compiled' if compiled else 'eager'}"
            models[key] = model

            def run(model: LoryTransformer = model) -> None:
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(idx[:, :-1]).logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
            steps[key] = run
    med = interleaved_medians(steps, rounds)  # the warm-up rounds compile
    rows = []
    for key, model in models.items():
        saved = graph_saved_bytes(model(idx[:, :-1]).logits, list(model.parameters()))
        eager = key.split()[0] + " eager"
        rows.append({"variant": key, "ms": med[key] * 1e3, "time_ratio": med[key] / med[eager],
                     "saved_MB": saved / 2 ** 20})
    print("compile: " + ", ".join(f"{r['variant']} {r['time_ratio']:.3f}x {r['saved_MB']:.0f} MB" for r in rows),
          flush=True)
    return rows


def data_part(data_dir: str | None) -> list[dict]:
    """Tokens/s the LoryDataModule streams from prepared shards (one process, no workers)."""
    from lory_lightning.data.datamodule import LoryDataModule

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        data_dir = f"{tmp.name}/sample-512"
    dm = LoryDataModule(data_dir=data_dir, seq_len=512, batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    n, t0 = 200, time.perf_counter()
    for _ in range(n):
        next(it)
    seconds = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    return [{"variant": "stream", "tokens_per_s": n * 8 * 512 / seconds}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["layer", "model", "adamw", "compile", "data"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--data", help="a prepared 512-token folder (default: prepare the sample in a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("LORY_BENCH_THREADS", os.cpu_count() or 1)))
    rows = {"layer": lambda: layer_part(args.rounds), "model": lambda: model_part(args.rounds),
            "adamw": lambda: adamw_part(args.rounds), "compile": lambda: compile_part(args.rounds),
            "data": lambda: data_part(args.data)}[args.part]()
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
