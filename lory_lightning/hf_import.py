"""A local Hugging Face Llama-architecture checkpoint as a dense LoryTransformer (``model.init_from: hf:PATH``).

Llama maps onto our decoder exactly (pre-RMSNorm blocks, rotate-half RoPE, bias-free attention with
grouped queries, SwiGLU), and so does Mistral while its sliding window covers the whole sequence.
Qwen2 does not: its q, k and v projections have biases, which our attention has not. Nothing is ever
downloaded: PATH is a folder written by ``save_pretrained`` (safetensors weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# the ModelConfig fields a checkpoint fixes: they must equal the run's
SHAPE_FIELDS = ("vocab_size", "dim", "n_layer", "n_head", "kv_heads", "hidden_dim", "rope_base", "norm_eps",
                "tie_embeddings")


def _rope_theta(cfg: Any) -> float:
    # transformers 5 keeps RoPE settings in rope_parameters ({"rope_type", "rope_theta", ...})
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"RoPE scaling ({kind}) is not supported: our decoder uses plain RoPE")
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def hf_folder(init_from: str) -> Path | None:
    """The Hugging Face model folder a path names (``model.init_from``, ``--ckpt_path``), or None for a lory checkpoint.

    ``hf:FOLDER`` always; a plain FOLDER when it holds a config.json (a sharded lory checkpoint never
    does), so a Hugging Face folder given without the prefix is still one.
    """
    if init_from.startswith("hf:"):
        return Path(init_from[3:])
    folder = Path(init_from)
    return folder if folder.is_dir() and (folder / "config.json").is_file() else None


def read_hf_shape(path: str | Path, seq_len: int | None = None) -> dict[str, Any]:
    """The shape a saved Llama-architecture model fixes (``SHAPE_FIELDS``), read from its config.json;
    refuses what does not map onto this decoder exactly. With ``seq_len`` (the run's), Mistral's
    sliding window must cover it."""
    from transformers import AutoConfig

    folder = Path(path)
    if not (folder / "config.json").is_file():
        lory = folder.exists()  # a checkpoint file, or a sharded checkpoint's folder
        raise FileNotFoundError(f"{folder}: no config.json: model.init_from: hf:PATH takes a folder written by "
                                "a Hugging Face model's save_pretrained" +
                                (f"; this is a lory checkpoint: model.init_from {folder}, without hf:" if lory else ""))
    cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    kind = cfg.model_type
    if kind not in ("llama", "mistral"):
        raise ValueError(f"{folder}: model_type {kind!r} does not map onto this decoder exactly; Llama and "
                         "Mistral do (Qwen2's attention has biases, ours none)")
    window = getattr(cfg, "sliding_window", None)
    if kind == "mistral" and window is not None and seq_len is not None and window < seq_len:
        raise ValueError(f"{folder}: Mistral's sliding window {window} is shorter than model.seq_len {seq_len}: "
                         "our attention sees the whole sequence")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ValueError(f"{folder}: attention or MLP biases: our decoder has none")
    if cfg.hidden_act != "silu":
        raise ValueError(f"{folder}: hidden_act {cfg.hidden_act!r}: our FFN is SwiGLU (silu)")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if getattr(cfg, "head_dim", head_dim) != head_dim:
        raise ValueError(f"{folder}: head_dim {cfg.head_dim} is not hidden_size / num_attention_heads")
    return {"vocab_size": cfg.vocab_size, "dim": cfg.hidden_size, "n_layer": cfg.num_hidden_layers,
            "n_head": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
            "hidden_dim": cfg.intermediate_size, "rope_base": _rope_theta(cfg), "norm_eps": float(cfg.rms_norm_eps),
            "tie_embeddings": bool(cfg.tie_word_embeddings)}


def read_hf_dense(path: str | Path, seq_len: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``read_hf_shape`` and the folder's weights as a dense LoryTransformer state dict."""
    folder = Path(path)
    shape = read_hf_shape(folder, seq_len)
    return shape, _to_lory(read_weights(folder), shape)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's *.safetensors files (a sharded save has several)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights (save with safe_serialization=True)")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights |= load_file(f)
    return weights


# SHAPE_FIELDS under their model.arch keys: ModelConfig.kv_heads is n_kv_head resolved
ARCH_KEYS = {name: ("n_kv_head" if name == "kv_heads" else name) for name in SHAPE_FIELDS}


def fill_arch(arch: Any, explicit: Any, folder: Path, data: Any = None, explicit_data: Any = None) -> list[str]:
    """Set the run's ``arch`` (model.arch, a mutable mapping) to the shape ``folder``'s config.json
    fixes, and ``data``'s vocab_size (data.vocab_size, which the CLI links into model.arch) to its
    vocabulary.

    ``explicit`` and ``explicit_data`` hold the keys the user gave (config files, command line): each
    must equal the checkpoint's, or one line names it. Returns what was filled in: ``section.key=value``.
    """
    shape = read_hf_shape(folder)
    filled = []
    for field, key in ARCH_KEYS.items():
        section, given_in, target = ("data", explicit_data, data) if key == "vocab_size" else ("model.arch", explicit, arch)
        if target is None:
            continue
        want = shape[field]
        given = given_in.get(key) if given_in is not None else None
        if given is not None and given != want:
            raise ValueError(f"model.init_from hf:{folder}: {section}.{key} is {given}, the checkpoint's "
                             f"config.json says {want}: drop the key (it is read from the checkpoint) or set {want}")
        if target.get(key) != want:
            target[key] = want
            filled.append(f"{section}.{key}={want}")
        if key == "vocab_size":
            arch[key] = want  # the link from data.vocab_size was applied when parsing
    return filled


def _to_lory(hf: dict[str, torch.Tensor], shape: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Llama names and layouts -> ours: q, k, v stacked into one matrix; FFN weights stored (in, out)."""
    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise ValueError(f"the checkpoint has no {name}: not a LlamaForCausalLM-style state dict")
        return hf[name]

    state = {"tok_emb.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight"),
             "lm_head.weight": hf.get("lm_head.weight", hf["model.embed_tokens.weight"])}
    for i in range(shape["n_layer"]):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        state[b + "attn.qkv.weight"] = torch.cat([take(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        state[b + "attn.proj.weight"] = take(p + "self_attn.o_proj.weight")
        for ours, theirs in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
            state[b + f"ffn.{ours}"] = take(p + f"mlp.{theirs}.weight").T.contiguous()
        state[b + "attn_norm.weight"] = take(p + "input_layernorm.weight")
        state[b + "ffn_norm.weight"] = take(p + "post_attention_layernorm.weight")
    return state


def check_shape(shape: dict[str, Any], cfg: Any, path: str) -> None:
    """Every field the checkpoint fixes must equal the run's ModelConfig: one error naming them all.
    (`lory fit` fills them from config.json first: fill_arch; this catches a model built otherwise.)"""
    wrong = [f"{name}: {shape[name]} (config: {getattr(cfg, name)})" for name in SHAPE_FIELDS
             if shape[name] != getattr(cfg, name)]
    if wrong:
        vocab = " (vocab_size follows data.vocab_size)" if shape["vocab_size"] != cfg.vocab_size else ""
        raise ValueError(f"model.init_from hf:{path}: the model section differs from the checkpoint; set "
                         f"model.arch to the checkpoint's values ({'; '.join(wrong)}; kv_heads is n_kv_head){vocab}")


def check_tokenizer(folder: Path, data_tokenizer: Path) -> None:
    """The prepared data's token ids must mean what the checkpoint's do: their vocabularies are equal
    (`lory prepare --tokenizer FOLDER` takes the checkpoint's own tokenizer). Nothing to check when
    the folder has no tokenizer.json."""
    from tokenizers import Tokenizer

    theirs = folder / "tokenizer.json"
    if not theirs.is_file() or not data_tokenizer.is_file():
        return
    if Tokenizer.from_file(str(theirs)).get_vocab() != Tokenizer.from_file(str(data_tokenizer)).get_vocab():
        raise ValueError(f"model.init_from hf:{folder}: the data in {data_tokenizer.parent} was tokenized with "
                         f"another vocabulary than the checkpoint's: prepare it with `lory prepare --tokenizer {folder}`")


def load_hf_model(folder: Path) -> tuple[Any, dict[str, Any]]:
    """A Hugging Face model folder as ``checkpoint_io.load_model`` returns a checkpoint: the
    LoryTransformer in eval mode, and a checkpoint-like dict (``hyper_parameters.arch``, the folder's
    ``tokenizer`` (tokenizer.json) and ``eod_id`` (its eos) where it has them).

    A ``lory`` export (``lory export``) is our decoder with its own weights; a Llama or Mistral folder
    (a dense export, or any saved model that maps exactly) becomes the dense decoder, as
    ``model.init_from`` imports it. So `lory generate`, `evaluate` and `perplexity` take either.
    """
    import dataclasses
    import json

    from .model import LoryTransformer, ModelConfig

    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") == "lory":
        from .model.configuration_lory import MODEL_FIELDS, RENAMED

        arch = {name: config[RENAMED.get(name, name)] for name in MODEL_FIELDS if RENAMED.get(name, name) in config}
        cfg = ModelConfig(**{**arch, "kernel": "auto"})
        state = {k.removeprefix("model."): v for k, v in read_weights(folder).items()}
    else:
        seq_len = int(config.get("max_position_embeddings") or ModelConfig().seq_len)
        shape, state = read_hf_dense(folder, seq_len)
        cfg = ModelConfig(ffn="dense", seq_len=seq_len, **{ARCH_KEYS[k]: v for k, v in shape.items()})
    model = LoryTransformer(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{folder}: its weights do not fit its config.json: {str(err).splitlines()[0]}") from err
    ckpt: dict[str, Any] = {"hyper_parameters": {"arch": dataclasses.asdict(cfg)}}
    if (folder / "tokenizer.json").is_file():
        ckpt["tokenizer"] = (folder / "tokenizer.json").read_text()
    eos = _eos_id(folder, config)
    if eos is not None:
        ckpt["eod_id"] = eos
    return model.eval(), ckpt


def _eos_id(folder: Path, config: dict[str, Any]) -> int | None:
    """The end-of-text id: generation_config.json's eos, else config.json's (the first of a list)."""
    import json

    generation = folder / "generation_config.json"
    eos = json.loads(generation.read_text()).get("eos_token_id") if generation.is_file() else None
    eos = config.get("eos_token_id") if eos is None else eos
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)
