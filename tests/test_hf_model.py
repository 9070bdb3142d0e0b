"""An exported Lory model does what transformers' users rely on, on a machine without lory_lightning:
padded batches, beam search, generation with and without the cache, gradient checkpointing, hidden
states, sdpa, resized embeddings."""

import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from lory_lightning.export import export  # noqa: E402
from test_hf_export import CFG, WITHOUT_LORY, _checkpoint, _hf_env  # noqa: E402

pytestmark = pytest.mark.isolated  # runs the exported code in a child process

# Runs in a fresh interpreter where lory_lightning cannot be imported (WITHOUT_LORY's first lines).
BEHAVIOUR = WITHOUT_LORY.split("from transformers")[0] + """
import tempfile
from transformers import AutoModelForCausalLM

path, routing = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="sdpa").eval()
assert model.config._attn_implementation == "sdpa"
model.config.routing = routing
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(1, 64, (n,), generator=g) for n in (3, 9, 5, 12)]
P = max(len(p) for p in prompts)


def padded(side):
    ids, mask = torch.zeros(4, P, dtype=torch.long), torch.zeros(4, P, dtype=torch.long)
    for b, p in enumerate(prompts):
        cols = slice(P - len(p), P) if side == "left" else slice(0, len(p))
        ids[b, cols], mask[b, cols] = p, 1
    return ids, mask


ids, mask = padded("left")
kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
with torch.no_grad():
    # a padded batch of 4 prompts of different lengths generates what each prompt alone generates
    batched = model.generate(ids, attention_mask=mask, **kw)[:, P:]
    for b, p in enumerate(prompts):
        alone = model.generate(p[None], **kw)[0, len(p):]
        assert torch.equal(batched[b], alone), (b, batched[b], alone)
    beams = model.generate(ids, attention_mask=mask, num_beams=3, **kw)[:, P:]
    for b, p in enumerate(prompts):
        alone = model.generate(p[None], num_beams=3, **kw)[0, len(p):]
        assert torch.equal(beams[b], alone), (b, beams[b], alone)
    if routing == "segment":  # without the cache, every step is the training forward of the whole sequence
        assert torch.equal(model.generate(ids, attention_mask=mask, use_cache=False, **kw)[:, P:], batched)
    else:
        try:
            model.generate(ids, attention_mask=mask, use_cache=False, **kw)
            raise AssertionError("prompt routing without the cache was not refused")
        except ValueError as err:
            assert "use_cache=True" in str(err), err
    # the forward: left or right padding, each row's logits at its tokens are its logits alone
    for side in ("left", "right"):
        ids_s, mask_s = padded(side)
        out = model(ids_s, attention_mask=mask_s, output_hidden_states=True)
        for b, p in enumerate(prompts):
            alone = model(p[None]).logits[0]
            torch.testing.assert_close(out.logits[b][mask_s[b].bool()], alone, rtol=0, atol=1e-5)
        assert len(out.hidden_states) == model.config.n_layer + 1
        assert all(h.shape == (4, P, model.config.dim) for h in out.hidden_states)
    try:
        model(ids, attention_mask=mask, output_attentions=True)
        raise AssertionError("output_attentions was not refused")
    except ValueError as err:
        assert "output_attentions=False" in str(err), err

# gradient checkpointing: the same loss and gradients, with the blocks recomputed in backward
model.train()
labels = ids.masked_fill(mask == 0, -100)


def loss_and_grads():
    loss = model(ids, attention_mask=mask, labels=labels).loss
    return loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


plain = loss_and_grads()
model.gradient_checkpointing_enable()
assert model.is_gradient_checkpointing and all(b.gradient_checkpointing for b in model.model.blocks)
checkpointed = loss_and_grads()
torch.testing.assert_close(checkpointed[0], plain[0], rtol=0, atol=0)
for a, b in zip(checkpointed[1], plain[1]):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
model.gradient_checkpointing_disable()

# resized embeddings: new rows, the old ones kept, and the folder saves and reloads at the new size
model.eval()
old = model.get_input_embeddings().weight[:64].detach().clone()
model.resize_token_embeddings(72)
assert model.get_input_embeddings().weight.shape[0] == 72 and model.config.vocab_size == 72
assert torch.equal(model.get_input_embeddings().weight[:64], old)
with torch.no_grad():
    logits = model(torch.tensor([[70, 3, 71]])).logits
assert logits.shape == (1, 3, 72)
with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    again = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(torch.tensor([[70, 3, 71]])).logits, logits, rtol=0, atol=0)
print("all behaviours ok")
"""


@pytest.mark.parametrize("routing", ["prompt", "segment"])
def test_the_exported_model_pads_searches_checkpoints_and_resizes_like_a_transformers_model(tmp_path, routing):
    _, ckpt = _checkpoint(tmp_path, CFG)
    out = export(ckpt, tmp_path / "export")
    run = subprocess.run([sys.executable, "-c", BEHAVIOUR, str(out), routing], capture_output=True, text=True,
                         env=_hf_env(tmp_path), cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "all behaviours ok" in run.stdout
