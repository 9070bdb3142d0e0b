"""`lory finetune`: an exported model fine-tuned on chat examples with LoRA (PEFT) under TRL's SFTTrainer.

The adapter wraps the attention's two Linear layers (``qkv``, ``proj``); the experts are (E, d, f)
parameters merged per segment and stay frozen. After training the adapter is merged into the
weights and the folder is written as ``lory export`` writes one, so AutoModelForCausalLM and `lory
generate`, `evaluate` and `perplexity` load it. docs/huggingface.md has the same recipe as Python.
Needs the ``finetune`` extra.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
# The attention's Linear layers per model type: LoRA's targets unless told otherwise.
DEFAULT_TARGETS = {"lory": ["qkv", "proj"], "llama": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def read_chats(path: str | Path) -> list[dict[str, Any]]:
    """The examples of a .jsonl file, one per line: ``{"messages": [{"role": ..., "content": ...}, ...]}``.

    A line that is not such an example is an error naming the file and line; blank lines are skipped.
    """
    path = Path(path)
    chats = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ValueError(f"--chats {path}: {err.strerror or err}") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            ok = isinstance(messages, list) and messages and all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages)
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{path}:{number}: not a chat example: each line is "
                             '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]} '
                             f"(roles: {', '.join(ROLES)})")
        chats.append({"messages": messages})
    if not chats:
        raise ValueError(f"{path}: no chat examples")
    return chats


def finetune(model_dir: str, chats: str, output: str, max_steps: int = 400, batch_size: int = 8, lr: float = 3e-3,
             lora_r: int = 64, lora_alpha: int = 128, targets: list[str] | None = None,
             seed: int = 0) -> dict[str, Any]:
    """Train, merge and write ``output``; returns the logged losses ({step: loss}) and the folder.
    ``targets`` default: the attention's Linear layers (a Lory export's qkv and proj, a Llama's four)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .export import carry_model_code, write_new_folder

    examples = read_chats(chats)
    if max_steps < 1 or batch_size < 1:
        raise ValueError("--max_steps and --batch_size must be >= 1")
    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"--model {model_dir}: no config.json: give a folder written by `lory export`")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    if not tokenizer.chat_template:
        raise ValueError(f"--model {model_dir}: its tokenizer has no chat template: export with "
                         "`lory export --chat_template FILE` (configs/chat-template.jinja is one)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    if targets is None:
        targets = DEFAULT_TARGETS.get(model.config.model_type, DEFAULT_TARGETS["llama"])
    losses: dict[int, float] = {}

    def write(tmp: Path) -> None:
        args = SFTConfig(output_dir=str(tmp / "trainer"), max_steps=max_steps, per_device_train_batch_size=batch_size,
                         learning_rate=lr, lr_scheduler_type="constant", logging_steps=max(1, max_steps // 10),
                         save_strategy="no", report_to="none", seed=seed, max_length=model.config.seq_len,
                         bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
                         disable_tqdm=True)
        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=list(targets), task_type="CAUSAL_LM")
        # prompt / completion: the loss on the last (assistant) turn only, what the model is taught to write
        pairs = [{"prompt": c["messages"][:-1], "completion": c["messages"][-1:]} for c in examples]
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer, peft_config=lora)
        trainer.train()
        losses.update({e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e})
        merged = trainer.model.merge_and_unload()
        shutil.rmtree(tmp / "trainer")  # the trainer's scratch folder (save_strategy no: nothing kept)
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if json.loads((tmp / "config.json").read_text()).get("model_type") == "lory":
            carry_model_code(tmp)  # loadable where lory_lightning is not installed, as the export was

    folder = write_new_folder(output, write, "lory-finetune")
    return {"losses": losses, "output": folder}
