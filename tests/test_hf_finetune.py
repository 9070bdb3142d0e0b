"""Fine-tuning an exported Lory model with the usual tools (the ``finetune`` extra): PEFT's LoRA on the
attention, trained by TRL's SFTTrainer on padded chat examples, merged, saved, reloaded and generating,
on a machine without lory_lightning (docs/huggingface.md, Fine-tuning)."""

import dataclasses
import subprocess
import sys

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("trl")

from lory_lightning.export import export  # noqa: E402
from lory_lightning.model import LoryTransformer, ModelConfig  # noqa: E402
from test_cli_lightning import ROOT  # noqa: E402
from test_hf_export import WITHOUT_LORY, _hf_env  # noqa: E402

pytestmark = pytest.mark.isolated  # runs the exported code in a child process

# The chat template docs/huggingface.md shows: turns as "<role>: text", each ended by the eos token.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def tokenized_checkpoint(tmp_path, vocab_size: int = 300) -> str:
    """A LoryLM-shaped checkpoint of a random tiny model with a byte-level BPE tokenizer trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = ["user: what do cats eat? assistant: cats eat fish.", "user: where is the moon? assistant: in the sky.",
            "user: name a colour. assistant: blue.", "the cat sat on the mat by the moon"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = __import__("tokenizers").decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg = ModelConfig(vocab_size=vocab_size, seq_len=64, segment_len=8, n_layer=2, n_head=2, dim=32, hidden_dim=48,
                      num_experts=4)
    torch.manual_seed(0)
    model = LoryTransformer(cfg)
    # A little pre-training on the plain text, as a model to fine-tune would have had: at its
    # initialization the head's logits are near 0 and a LoRA on the attention alone moves them slowly.
    ids = torch.tensor([i for t in text for i in tok.encode(t + "<|endoftext|>").ids])
    rows = ids[:len(ids) // cfg.seq_len * cfg.seq_len].view(-1, cfg.seq_len)  # (R, L)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(60):
        batch = rows[torch.randint(0, len(rows), (8,), generator=torch.Generator().manual_seed(step))]
        logits = model(batch).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path / "tiny.ckpt"
    torch.save({"hyper_parameters": {"arch": dataclasses.asdict(cfg)}, "tokenizer": tok.to_str(),
                "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    return str(path)


TOKENIZER = WITHOUT_LORY.split("from transformers")[0] + """
from transformers import AutoTokenizer, PreTrainedTokenizerFast
for tok in (AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=False),
            PreTrainedTokenizerFast.from_pretrained(sys.argv[1])):
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == 0, tok
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "user: hi<|endoftext|>assistant:", text
    assert tok.decode(tok("the cat sat")["input_ids"]) == "the cat sat"
print("tokenizer ok")
"""


def test_the_exported_tokenizer_loads_without_remote_code_or_a_prompt(tmp_path):
    out = export(tokenized_checkpoint(tmp_path), tmp_path / "export", chat_template=CHAT_TEMPLATE)
    # stdin left open and silent: a [y/N] prompt would wait on it
    run = subprocess.run([sys.executable, "-c", TOKENIZER, str(out)], capture_output=True, text=True,
                         env=_hf_env(tmp_path), cwd=tmp_path, timeout=120, stdin=subprocess.PIPE)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tokenizer ok" in run.stdout and "[y/N]" not in run.stdout + run.stderr


# The recipe of docs/huggingface.md (Fine-tuning), at a tiny size.
FINETUNE = WITHOUT_LORY.split("from transformers")[0] + """
import json
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

path, work = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in
         [("what do cats eat?", "cats eat fish."), ("where is the moon?", "in the sky."), ("name a colour.", "blue."),
          ("what sat on the mat?", "the cat sat on the mat.")]] * 8
dataset = Dataset.from_list([{"messages": m} for m in chats])
args = SFTConfig(output_dir=work + "/sft", max_steps=40, per_device_train_batch_size=4, learning_rate=1e-2,
                 lr_scheduler_type="constant", logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
                 max_length=64, gradient_checkpointing=True, seed=0,
                 bf16=False)  # TRL's default is bf16 autocast (accelerate keeps it on the trained model's forward)
lora = LoraConfig(r=8, lora_alpha=16, target_modules=["qkv", "proj"], task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
first_batch = next(iter(trainer.get_train_dataloader()))
padded = bool((first_batch["attention_mask"] == 0).any())
trainer.train()
losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
trained = trainer.model.eval()
prompt = tokenizer.apply_chat_template([chats[0][0]], tokenize=False, add_generation_prompt=True)
batch = tokenizer([prompt, tokenizer.apply_chat_template([chats[1][0]], tokenize=False, add_generation_prompt=True)],
                  return_tensors="pt", padding=True)
with torch.no_grad():
    adapter_logits = trained(**batch, use_cache=False).logits
lora = sorted({n.split(".")[-2] for n, _ in trained.named_modules() if n.endswith("lora_A")})
merged = trained.merge_and_unload()
merged.save_pretrained(work + "/merged")
tokenizer.save_pretrained(work + "/merged")
again = AutoModelForCausalLM.from_pretrained(work + "/merged", trust_remote_code=True).eval()
with torch.no_grad():
    merged_logits = again(**batch, use_cache=False).logits
    out = again.generate(**batch, max_new_tokens=8, do_sample=False)
real = batch["attention_mask"].bool()
json.dump({"losses": losses, "padded": padded, "gap": (merged_logits - adapter_logits)[real].abs().max().item(),
           "answers": tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True),
           "lora": lora},
          open(work + "/result.json", "w"))
"""


def test_lora_sft_on_padded_chats_trains_merges_reloads_and_generates(tmp_path):
    import json

    out = export(tokenized_checkpoint(tmp_path), tmp_path / "export", chat_template=CHAT_TEMPLATE)
    run = subprocess.run([sys.executable, "-c", FINETUNE, str(out), str(tmp_path)], capture_output=True, text=True,
                         env=_hf_env(tmp_path), cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["padded"]  # the examples differ in length: the trainer's batches are padded
    losses = result["losses"]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses
    assert result["gap"] < 1e-4  # the merged weights compute what base + adapter computed
    assert result["lora"] == ["proj", "qkv"]  # the attention's two Linear layers (docs/huggingface.md)
    assert result["answers"] == [" cats eat fish.", " in the sky."], result["answers"]  # learned, and padded right


def test_lory_export_takes_the_chat_template_from_a_file(tmp_path, capsys):
    from transformers import PreTrainedTokenizerFast

    from lory_lightning.cli import main

    ckpt = tokenized_checkpoint(tmp_path)
    template = tmp_path / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    assert main(["export", "--ckpt_path", ckpt, "--output", str(tmp_path / "hf"), "--chat_template", str(template)]) == 0
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    assert tok.chat_template == CHAT_TEMPLATE
    assert main(["export", "--ckpt_path", ckpt, "--output", str(tmp_path / "hf2"), "--chat_template",
                 str(tmp_path / "nope.jinja")]) == 1
    assert "--chat_template " + str(tmp_path / "nope.jinja") in capsys.readouterr().err


def test_lory_finetune_trains_merges_and_its_folder_generates_with_and_without_lory(tmp_path, capsys):
    import re

    from lory_lightning.cli import main

    ckpt = tokenized_checkpoint(tmp_path)
    template = str(ROOT / "configs" / "chat-template.jinja")
    assert main(["export", "--ckpt_path", ckpt, "--output", str(tmp_path / "hf"), "--chat_template", template]) == 0
    chats = str(ROOT / "lory_lightning" / "sample_data" / "chats.jsonl")
    capsys.readouterr()
    assert main(["finetune", "--model", str(tmp_path / "hf"), "--chats", chats, "--output", str(tmp_path / "sft"),
                 "--max_steps", "20", "--lr", "1e-2"]) == 0
    out = capsys.readouterr().out
    first, last = map(float, re.search(r"train loss ([\d.]+) at step 2, ([\d.]+) at step 20", out).groups())
    assert last < 0.8 * first, out
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "sft" / "trainer").exists()
    prompt = "user: Who wrote Hamlet?<|endoftext|>assistant:"
    assert main(["generate", "--ckpt_path", str(tmp_path / "sft"), "--prompt", prompt, "--max_new_tokens", "8",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("user: Who wrote Hamlet?assistant:")  # eos is not printed
    # the folder loads where lory_lightning is not installed, as the export did
    torch.save(torch.tensor([[5, 6, 7]]), tmp_path / "idx.pt")
    run = subprocess.run([sys.executable, "-c", WITHOUT_LORY, str(tmp_path / "sft"), str(tmp_path / "idx.pt"),
                          str(tmp_path / "got.pt")], capture_output=True, text=True, env=_hf_env(tmp_path),
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert torch.load(tmp_path / "got.pt")["class"] == "LoryForCausalLM"


def test_lory_finetune_names_a_bad_line_and_a_missing_template(tmp_path, capsys):
    from lory_lightning.cli import main

    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    out = export(tokenized_checkpoint(tmp_path), tmp_path / "hf")  # no chat template
    assert main(["finetune", "--model", str(out), "--chats", str(chats), "--output", str(tmp_path / "sft")]) == 1
    assert f"{chats}:3: not a chat example" in capsys.readouterr().err
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert main(["finetune", "--model", str(out), "--chats", str(chats), "--output", str(tmp_path / "sft")]) == 1
    assert "its tokenizer has no chat template: export with `lory export --chat_template FILE`" in capsys.readouterr().err
    assert not (tmp_path / "sft").exists()
