"""`lory export`: a LoryLM checkpoint as a Hugging Face model folder (needs the ``hf`` extra).

A routed model becomes a ``lory`` model: safetensors weights, config.json whose ``auto_map`` names the
modeling code copied beside it (model/ itself, which imports only torch and transformers), the
tokenizer with its end-of-text token as eos and bos, and a generation config. It loads with
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` where lory_lightning is not
installed, and without trust_remote_code after ``import lory_lightning.hf``.

A dense checkpoint maps exactly onto the Llama architecture (pre-RMSNorm blocks, rotate-half RoPE,
bias-free attention and SwiGLU): it is written as a plain ``LlamaForCausalLM`` that needs no code of ours.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from .atomic import SWAP_MARK, new_folder
from .checkpoint_io import end_of_text_id, load_model
from .errors import with_path
from .model import LoryTransformer, ModelConfig

MODEL_CODE = Path(__file__).resolve().parent / "model"


def llama_state_dict(model: LoryTransformer) -> dict[str, torch.Tensor]:
    """A dense LoryTransformer's weights under LlamaForCausalLM's names and layouts.

    Our attention keeps q, k and v stacked in one (d + 2 kv, d) matrix, Llama in three; our FFN stores
    weights (in, out), Llama's Linear layers (out, in).
    """
    cfg = model.config
    if cfg.ffn != "dense":
        raise ValueError(f"only a dense model maps onto Llama, got ffn={cfg.ffn!r}")
    state = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        kv = block.attn.kv_dim
        q, k, v = block.attn.qkv.weight.split([cfg.dim, kv, kv], dim=0)  # (d, d), (kv, d), (kv, d)
        state |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                  p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": block.attn.proj.weight,
                  p + "mlp.gate_proj.weight": block.ffn.w_gate.T, p + "mlp.up_proj.weight": block.ffn.w_up.T,
                  p + "mlp.down_proj.weight": block.ffn.w_down.T,
                  p + "input_layernorm.weight": block.attn_norm.weight,
                  p + "post_attention_layernorm.weight": block.ffn_norm.weight}
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def llama_config(cfg: ModelConfig, **tokens: Any):  # noqa: ANN201 (transformers.LlamaConfig)
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                       num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.seq_len,
                       rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base, hidden_act="silu",
                       attention_bias=False, mlp_bias=False, tie_word_embeddings=cfg.tie_embeddings,
                       torch_dtype="float32", **tokens)


def _write_tokenizer(ckpt: dict[str, Any], output: Path, max_length: int,
                     chat_template: str | None = None) -> dict[str, int]:
    """tokenizer.json + tokenizer_config.json with eos = bos = pad = the end-of-text token the data was
    packed with (the checkpoint's ``eod_id``; ``<|endoftext|>`` in checkpoints from before it was kept),
    and ``chat_template`` (Jinja text) when given. It is transformers' own fast tokenizer: no code of ours."""
    if ckpt.get("tokenizer") is None:
        if chat_template is not None:
            raise ValueError("a chat template was given, but the checkpoint has no tokenizer to carry it")
        return {}
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(ckpt["tokenizer"])
    eod = end_of_text_id(ckpt, tok)
    if eod is None:
        raise ValueError("the checkpoint's tokenizer has no <|endoftext|> token and the checkpoint names no eod_id")
    eos = tok.id_to_token(eod)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos,
                                   model_max_length=max_length, padding_side="left")  # left: for batched generate
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(output)
    return {"eos_token_id": eod, "bos_token_id": eod, "pad_token_id": eod}


def export(ckpt_path: str | Path, output: str | Path, routing: str = "prompt", chat_template: str | None = None) -> Path:
    """Write the checkpoint's model to ``output`` as a Hugging Face folder; returns the folder.
    ``chat_template``: Jinja text the tokenizer's ``apply_chat_template`` uses.
    """
    model, ckpt = load_model(ckpt_path)
    return write_new_folder(output, lambda tmp: _write_export(model, ckpt, str(ckpt_path), tmp, routing, chat_template),
                            "lory-export")


def write_new_folder(output: str | Path, write: Callable[[Path], None], tag: str) -> Path:
    """Have ``write`` fill a new folder that becomes ``output`` (new, or empty) only when complete.

    The folder is written beside ``output`` under a temporary name (``NAME.TAG.tmp``, with the swap
    mark) and renamed when complete: a failed write (a full disk) leaves nothing behind that looks
    finished or blocks the same command again.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output}: not empty; a new folder is written")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder(output.with_name(f"{output.name}.{tag}.tmp"))  # a killed write's leftover goes
    try:
        write(tmp)
        (tmp / SWAP_MARK).unlink()
        if output.exists():
            output.rmdir()  # empty (checked above)
        os.replace(tmp, output)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise with_path(err, output) from err
        raise
    return output


AUTO_MAP = {"AutoConfig": "configuration_lory.LoryConfig", "AutoModelForCausalLM": "modeling_lory.LoryForCausalLM"}


def carry_model_code(folder: Path) -> None:
    """Make a saved ``lory`` folder load where lory_lightning is not installed: model/'s files beside
    the weights and config.json's ``auto_map`` naming them (trust_remote_code)."""
    for path in sorted(MODEL_CODE.glob("*.py")):
        if path.name != "__init__.py":  # the package's __init__ would import generate, upcycle, ...
            shutil.copy2(path, folder / path.name)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = AUTO_MAP
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_export(model: LoryTransformer, ckpt: dict[str, Any], ckpt_path: str, output: Path, routing: str,
                  chat_template: str | None) -> None:
    from transformers import GenerationConfig

    cfg = model.config
    tokens = _write_tokenizer(ckpt, output, cfg.seq_len, chat_template)
    if cfg.ffn == "dense":
        from transformers import LlamaForCausalLM

        hf_cfg = llama_config(cfg, **tokens)
        with torch.device("meta"):
            hf = LlamaForCausalLM(hf_cfg)
        hf.load_state_dict(llama_state_dict(model), strict=False, assign=True)
        if cfg.tie_embeddings:
            hf.tie_weights()
    else:
        from .model.configuration_lory import LoryConfig
        from .model.modeling_lory import LoryForCausalLM

        hf_cfg = LoryConfig.from_model_config(cfg, routing=routing, **tokens)
        with torch.device("meta"):
            hf = LoryForCausalLM(hf_cfg)
        hf.model.load_state_dict(model.state_dict(), assign=True)
    hf.save_pretrained(output)
    if cfg.ffn != "dense":
        carry_model_code(output)
    GenerationConfig(**tokens).save_pretrained(output)
    (output / "lory_export.json").write_text(json.dumps(
        {"checkpoint": ckpt_path, "architecture": type(hf).__name__, "routing": routing}, indent=2) + "\n")
