"""`lory evaluate`: downstream tasks through lm-evaluation-harness (the ``eval`` extra).

``LoryEvalLM`` is lm-eval's LM interface over a LoryTransformer and the tokenizer its checkpoint
carries. Requests are scored exactly, one sequence per row, never padded (segment routing averages
every position of a segment, so a pad would change the routing), and batched among requests of the
same token lengths. The routing mode is an option because the paper compares the two (LORY.md
section 2):

- ``segment``: the training computation, teacher-forced: each segment merges with the routing of
  the one before it;
- ``prompt``: each layer's FFN is merged once from the context (the prompt) and serves every scored or
  generated token, as at inference; what is scored never routes the FFN that scores it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from .model import LoryTransformer, generate
from .model.moe import ROUTING_MODES

TASKS = Path(__file__).resolve().parents[1] / "configs" / "eval" / "tasks"


class LoryEvalLM(TemplateLM):
    """lm-eval's LM for a LoryTransformer.

    Args:
        model: The decoder (put in eval mode).
        tokenizer: A ``tokenizers.Tokenizer``.
        eod_id: The end-of-text id the data was packed with: lm-eval's end-of-text and empty context.
        routing: ``segment`` or ``prompt`` (see the module docstring).
        batch_size: Requests of equal lengths scored together.
    """

    def __init__(self, model: LoryTransformer, tokenizer: Any, eod_id: int, routing: str = "segment",
                 batch_size: int = 8) -> None:
        super().__init__()
        if routing not in ROUTING_MODES:
            raise ValueError(f"--routing must be one of {ROUTING_MODES}, got {routing!r}")
        if batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
        self.model, self.tok, self.eod, self.routing, self.batch_size = model.eval(), tokenizer, eod_id, routing, batch_size
        self.max_length = model.config.seq_len

    @property
    def eot_token_id(self) -> int:
        return self.eod

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string).ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    @torch.no_grad()
    def _continuation_log_probs(self, context: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, C, V) of the positions that predict each continuation token, for
        contexts (B, P) and continuations (B, C) all of one length each."""
        if self.routing == "segment":
            logits = self.model(torch.cat([context, continuation], dim=1)).logits  # (B, P + C, V)
            logits = logits[:, context.shape[1] - 1:-1]  # (B, C, V): position t predicts token t + 1
        else:
            cache = self.model.new_cache(context.shape[0], context.shape[1] + continuation.shape[1], "prompt")
            steps = [self.model.step(context, cache)[:, -1:]]  # the context routes; (B, 1, V)
            for i in range(continuation.shape[1] - 1):
                steps.append(self.model.step(continuation[:, i:i + 1], cache))  # (B, 1, V)
            logits = torch.cat(steps, dim=1)  # (B, C, V)
        return F.log_softmax(logits.float(), dim=-1)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        windows = []
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("lm-eval asked for the likelihood of an empty continuation")
            # Left-truncate to the model's sequence length, keeping at least one token of context.
            whole = (context + continuation)[-(self.max_length + 1):]
            split = len(whole) - len(continuation)
            context, continuation = whole[:max(split, 1)], whole[max(split, 1):]
            windows.append((context, continuation))
            groups[(len(context), len(continuation))].append(i)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                ctx = torch.tensor([windows[i][0] for i in batch])  # (B, P)
                cont = torch.tensor([windows[i][1] for i in batch])  # (B, C)
                logp = self._continuation_log_probs(ctx, cont)  # (B, C, V)
                chosen = logp.gather(-1, cont[..., None])[..., 0]  # (B, C)
                greedy = (logp.argmax(dim=-1) == cont).all(dim=1)  # (B,)
                for j, i in enumerate(batch):
                    results[i] = (float(chosen[j].sum()), bool(greedy[j]))
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood, in windows of the model's sequence length after an end-of-text."""
        out = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text), self.eod, self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([((text, ""), c, t) for c, t in windows])
            out.append(sum(score for score, _ in scores))
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or as the task asks: temperature) continuation, cut at the first stop string."""
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or [self.tok_decode([self.eod])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context)[-self.max_length:] or [self.eod]
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            tokens = generate(self.model, torch.tensor([ids]), max_new, temperature=temperature,
                              routing=self.routing, eos_id=self.eod)[0, len(ids):].tolist()
            if self.eod in tokens:
                tokens = tokens[:tokens.index(self.eod)]
            text = self.tok_decode(tokens)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
        return out


def evaluate(ckpt_path: str | Path, tasks: list[str], num_fewshot: int | None = None, routing: str = "segment",
             include_path: list[str] | None = None, limit: int | None = None, batch_size: int = 8,
             seed: int = 0) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of a checkpoint on ``tasks`` (names lm-eval knows, or the tasks in
    configs/eval/tasks and ``include_path``); returns lm-eval's results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from tokenizers import Tokenizer

    from .checkpoint_io import end_of_text_id, load_model

    manager = TaskManager(include_path=[str(TASKS), *(include_path or [])])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        raise ValueError(f"--tasks: {', '.join(unknown)} not known to lm-eval or in {TASKS} / --include_path"
                         f"{' (close: ' + ', '.join(near) + ')' if near else ''}; `lm-eval ls tasks` lists the names")
    model, ckpt = load_model(ckpt_path)
    if "tokenizer" not in ckpt:
        raise ValueError(f"{ckpt_path} carries no tokenizer (written before checkpoints kept it); lm-eval needs one")
    tok = Tokenizer.from_str(ckpt["tokenizer"])
    eod = end_of_text_id(ckpt, tok)
    if eod is None:
        raise ValueError(f"{ckpt_path}: its tokenizer has no <|endoftext|> token and the checkpoint names no eod_id")
    lm = LoryEvalLM(model, tok, eod, routing, batch_size)
    return simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, task_manager=manager, limit=limit,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                           fewshot_random_seed=seed, bootstrap_iters=0, log_samples=False)
