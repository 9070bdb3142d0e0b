"""model.compile in a fresh process, for every FFN kind and both recompute settings.

A fresh process matters: once an eager backward had run in the same process, torch.compile
traced the recomputing Lory layer without complaint, so an in-process test hid a crash that
every new `lory fit --model.compile true` met (InternalTorchDynamoError in MergedSwiGLU.backward).
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from lory_lightning.model.ffn import FFN_KINDS

# One tiny block, compiled, forward and backward; its gradients compared with an eager copy's.
CHILD = """
import copy, sys, torch
from lory_lightning.model.config import ModelConfig
from lory_lightning.model.transformer import LoryTransformer, compile_blocks
kind, recompute = sys.argv[1], sys.argv[2] == "1"
torch.manual_seed(0)
cfg = ModelConfig(ffn=kind, recompute_merge=recompute, n_layer=1, dim=32, hidden_dim=64, n_head=2,
                  num_experts=2, top_k=1, segment_len=8, seq_len=32, vocab_size=64)
compiled = LoryTransformer(cfg)
eager = copy.deepcopy(compiled)
compile_blocks(compiled)
idx = torch.randint(0, 64, (2, 32))
compiled(idx).logits.square().mean().backward()
eager(idx).logits.square().mean().backward()
print(max((a.grad - b.grad).abs().max().item() for a, b in zip(compiled.parameters(), eager.parameters())))
"""

CASES = [(kind, recompute) for kind in FFN_KINDS
         for recompute in ((True, False) if kind.startswith("lory") else (True,))]


@pytest.mark.slow
def test_compiled_blocks_train_in_a_fresh_process_for_every_ffn_kind():
    def run(case):
        kind, recompute = case
        return subprocess.run([sys.executable, "-c", CHILD, kind, str(int(recompute))],
                              capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, CASES))
    for (kind, recompute), res in zip(CASES, results):
        assert res.returncode == 0, f"{kind} recompute_merge={recompute}:\n{res.stderr[-3000:]}"
        assert float(res.stdout.split()[-1]) < 1e-6, (kind, recompute, res.stdout)
