"""The fused Triton kernels (model/fused_gemm.py, model/fused_swiglu.py) against the float64 torch
reference: forward and every gradient, at shapes that are not multiples of the tiles, E from 1 to 32,
one segment and many; bf16; torch.compile tracing; a short training run equal to the torch path's.

On a CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
anything imports triton): slow, so the shapes are tiny.
"""

import pytest
import torch

pytest.importorskip("triton", reason="the gpu extra (pip install -e '.[gpu]')")

from lory_lightning.model import fused  # noqa: E402
from lory_lightning.model.config import ModelConfig  # noqa: E402
from lory_lightning.model.fused_gemm import merged_matmul, merged_swiglu_up, merged_weight_grad  # noqa: E402
from lory_lightning.model.moe import LoryMoE  # noqa: E402
from lory_lightning.model.transformer import LoryTransformer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not fused.INTERPRET:
    pytest.skip("no CUDA device and TRITON_INTERPRET is not set", allow_module_level=True)


def merge(p, w):
    return torch.einsum("re,ekn->rkn", p, w)  # (R, E) x (E, K, N) -> (R, K, N)


def rel(a, b):
    """Largest difference relative to the reference's largest value (absolute where that is 0: E = 1)."""
    b = b.double().cpu()
    scale = b.abs().max().item()
    return (a.double().cpu() - b).abs().max().item() / (scale if scale > 0 else 1.0)


# (R segments, T tokens, K, N, E): T, K and N off the 16-tiles; one segment and many; E 1 to 32
SHAPES = [(1, 16, 16, 16, 1), (5, 20, 24, 40, 2), (3, 9, 17, 33, 8), (2, 12, 20, 18, 32)]


@pytest.mark.parametrize("R,T,K,N,E", SHAPES)
def test_the_three_kernels_equal_the_float64_reference(R, T, K, N, E):
    g = torch.Generator().manual_seed(R * 1000 + E)
    x, w = torch.randn(R, T, K, generator=g, dtype=torch.float64), torch.randn(E, K, N, generator=g, dtype=torch.float64)
    w2 = torch.randn(E, K, N, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(R, E, generator=g, dtype=torch.float64), dim=-1)
    gy = torch.randn(R, T, N, generator=g, dtype=torch.float64)
    dev = lambda t: t.float().to(DEVICE)  # noqa: E731

    y = merged_matmul(dev(x), dev(w), dev(p))
    assert rel(y, x @ merge(p, w)) < 1e-5
    merged_matmul(dev(x), dev(w2), dev(p), out=y)  # the accumulating form: two products in one output
    assert rel(y, x @ merge(p, w) + x @ merge(p, w2)) < 1e-5
    # a transposed view of the experts (how the backward multiplies by M^T)
    assert rel(merged_matmul(dev(gy), dev(w).transpose(1, 2), dev(p)), gy @ merge(p, w).transpose(1, 2)) < 1e-5

    gu, h = merged_swiglu_up(dev(x), dev(w), dev(w2), dev(p))
    gate, up = x @ merge(p, w), x @ merge(p, w2)
    assert rel(gu, torch.cat([gate, up], dim=-1)) < 1e-5
    assert rel(h, torch.nn.functional.silu(gate) * up) < 1e-5

    dw, dp = merged_weight_grad(dev(x), dev(gy), dev(w), dev(p))
    c = x.transpose(1, 2) @ gy  # (R, K, N): each segment's a^T g, which the kernel never stores
    assert dw.dtype == torch.float32 and dp.shape == (R, E)
    assert rel(dw, torch.einsum("re,rkn->ekn", p, c)) < 1e-5
    assert rel(dp, torch.einsum("ekn,rkn->re", w, c)) < 1e-5


def layer_pair(E, d=24, f=40, T=8):
    ref = LoryMoE(d, f, E, T, kernel="torch").double()
    ref.reset_parameters(std=0.3, router_std=0.5)
    fused_layer = LoryMoE(d, f, E, T, kernel="triton").to(DEVICE)
    fused_layer.load_state_dict(ref.state_dict())
    return ref, fused_layer


def outputs_and_grads(layer, x, gy):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    grads = torch.autograd.grad((y * gy.to(y.dtype)).sum(), [x, *layer.parameters()])
    return [y.detach(), *grads]


@pytest.mark.parametrize("E,segments", [(1, 2), (2, 5), (8, 2), (8, 5), (32, 2)])
def test_the_fused_layer_gives_the_reference_output_and_every_gradient(E, segments):
    # grads of the input, the three expert tensors and the router (through the routing weights)
    ref, fused_layer = layer_pair(E)
    g = torch.Generator().manual_seed(E)
    x = torch.randn(2, segments * 8, 24, generator=g, dtype=torch.float64)
    gy = torch.randn(2, segments * 8, 24, generator=g, dtype=torch.float64)
    want = outputs_and_grads(ref, x, gy)
    got = outputs_and_grads(fused_layer, x.float().to(DEVICE), gy.float().to(DEVICE))
    names = ["y", "x", *(n for n, _ in ref.named_parameters())]
    assert names[-1] == "router.weight"
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and rel(a, b) < 2e-5, name


def test_bf16_autocast_is_within_bf16_rounding_and_gradients_keep_their_dtypes():
    # Stated tolerance: 3e-2 of the largest value, the rounding of bf16 inputs (8 mantissa bits)
    # through two products; the torch path under the same autocast is held to the same bound.
    ref, fused_layer = layer_pair(8)
    x = torch.randn(2, 32, 24, dtype=torch.float64)
    gy = torch.randn(2, 32, 24, dtype=torch.float64)
    want = outputs_and_grads(ref, x, gy)
    torch_fp32 = LoryMoE(24, 40, 8, 8, kernel="torch")
    torch_fp32.load_state_dict(ref.state_dict())
    for layer, device in ((fused_layer, DEVICE), (torch_fp32, "cpu")):
        with torch.autocast(device, dtype=torch.bfloat16):
            got = outputs_and_grads(layer.to(device), x.float().to(device), gy.float().to(device))
        assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
        assert all(t.dtype == torch.float32 for t in got[2:])
        for a, b in zip(got, want):
            assert rel(a, b) < 3e-2


def test_bf16_routing_gradient_keeps_the_expert_differences_right_after_upcycling():
    # Experts equal up to 1e-4 (relative): cast to bf16 they are equal. The kernels merge and take
    # <W_e, a^T g> from the fp32 experts on chip, so the router still learns their differences.
    g = torch.Generator().manual_seed(0)
    layer = LoryMoE(32, 48, 8, 16, kernel="triton")
    with torch.no_grad():
        for w in (layer.w_gate, layer.w_up, layer.w_down):
            w.copy_(torch.randn(w.shape[1:], generator=g) * 0.05 * (1 + 1e-4 * torch.randn(w.shape, generator=g)))
    x, gy = torch.randn(2, 32, 32, generator=g), torch.randn(2, 32, 32, generator=g)
    weights = torch.softmax(torch.randn(4, 8, generator=g), dim=-1)
    from lory_lightning.model.fused_swiglu import merged_swiglu_fused
    from lory_lightning.model.merged_swiglu import merged_swiglu

    def routing_grad(fn, autocast, device):
        w = weights.to(device).requires_grad_(True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            y = fn(x.reshape(4, 16, 32).to(device), w, *(p.to(device) for p in (layer.w_gate, layer.w_up, layer.w_down)))
        return torch.autograd.grad((y.float() * gy.reshape(4, 16, 32).to(device)).sum(), [w])[0].cpu()

    ref = routing_grad(merged_swiglu, False, "cpu")
    got = routing_grad(merged_swiglu_fused, True, DEVICE)
    centred = lambda t: (t - t.mean(dim=-1, keepdim=True)).flatten()  # noqa: E731
    assert torch.nn.functional.cosine_similarity(centred(ref), centred(got), dim=0) >= 0.99


def test_the_fused_op_traces_through_torch_compile_in_one_graph():
    ref, fused_layer = layer_pair(4)
    x = torch.randn(2, 16, 24, device=DEVICE)
    compiled = torch.compile(fused_layer, backend="aot_eager", fullgraph=True)  # fake impls, registered autograd
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, fused_layer(x), rtol=0, atol=0)
    assert fused_layer.w_gate.grad is not None and fused_layer.router.weight.grad.abs().max() > 0


def test_the_fused_layer_refuses_double_backward():
    _, fused_layer = layer_pair(2)
    x = torch.randn(1, 16, 24, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(fused_layer(x).sum(), [x], create_graph=True)


def test_a_short_training_run_gives_the_torch_paths_losses():
    # tiny Lory, fp32, 3 AdamW steps on one batch: the losses agree within 1e-5 (and fall)
    losses = {}
    for kernel in ("torch", "triton"):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=64, seq_len=32, n_layer=2, n_head=2, dim=32, hidden_dim=32, num_experts=4,
                          segment_len=8, kernel=kernel)
        model = LoryTransformer(cfg).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        ids = torch.randint(0, 64, (2, 33), generator=torch.Generator().manual_seed(1)).to(DEVICE)
        losses[kernel] = []
        for _ in range(3):
            logits = model(ids[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[kernel].append(loss.item())
    assert losses["triton"] == pytest.approx(losses["torch"], abs=1e-5)
    assert losses["torch"][-1] < losses["torch"][0]


def test_the_kernel_switch():
    x = torch.zeros(1, 2, device="cpu")
    assert not fused.use_fused("torch", x)
    assert fused.use_fused("auto", x) is False  # auto: the fused path only on CUDA
    with pytest.raises(ValueError, match="model.kernel must be one of auto, torch, triton, got 'cuda'"):
        ModelConfig(kernel="cuda")


def test_kernel_triton_where_it_cannot_run_says_why(monkeypatch):
    x = torch.zeros(1, 2)
    monkeypatch.setattr(fused, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="model.kernel is triton but this run is on cpu"):
        fused.use_fused("triton", x)
    monkeypatch.setattr(fused, "TRITON", False)
    with pytest.raises(RuntimeError, match=r"Triton is not installed: pip install -e \"\.\[gpu\]\""):
        fused.use_fused("triton", x)


def test_a_checkpoint_trained_on_the_fused_kernels_is_read_anywhere(tmp_path):
    # generate, export, evaluate, perplexity and analyze build the model with kernel auto: the
    # checkpoint's model.kernel (how it ran) does not tie it to a GPU
    import dataclasses

    from lory_lightning.checkpoint_io import load_model

    cfg = ModelConfig(vocab_size=64, seq_len=32, n_layer=1, n_head=2, dim=32, hidden_dim=32, num_experts=2,
                      segment_len=8, kernel="triton")
    model = LoryTransformer(cfg)
    path = tmp_path / "fused.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"arch": dataclasses.asdict(cfg)}}, path)
    loaded, _ = load_model(path)
    assert loaded.config.kernel == "auto" and dataclasses.replace(loaded.config, kernel="triton") == cfg
    assert not fused.use_fused(loaded.config.kernel, torch.zeros(1))
