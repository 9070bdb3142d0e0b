"""`lory evaluate`: lm-eval on the local tasks of configs/eval, with real numbers and no hub."""

import dataclasses
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lory_lightning.cli import main  # noqa: E402
from lory_lightning.data.tokenizer import eod_id, train_tokenizer  # noqa: E402
from lory_lightning.evaluate import TASKS, evaluate  # noqa: E402
from lory_lightning.model import LoryTransformer, ModelConfig  # noqa: E402

CFG = ModelConfig(vocab_size=300, seq_len=32, segment_len=4, n_layer=2, n_head=2, dim=48, hidden_dim=64,
                  num_experts=4)
ROWS = [json.loads(line) for line in (TASKS / "toy_mc.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An untrained model and one trained to memorize each question's answer, as LoryLM checkpoints."""
    root = tmp_path_factory.mktemp("eval")
    texts = [r["question"] + " " + c for r in ROWS for c in r["choices"]]
    tok = train_tokenizer(texts * 5, CFG.vocab_size)
    eod = eod_id(tok)
    torch.manual_seed(0)
    model = LoryTransformer(CFG)

    def save(name):
        path = root / f"{name}.ckpt"
        torch.save({"hyper_parameters": {"arch": dataclasses.asdict(CFG)}, "tokenizer": tok.to_str(), "eod_id": eod,
                    "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
        return str(path)

    untrained = save("untrained")
    seqs = [tok.encode(r["question"] + " " + r["choices"][r["answer"]]).ids for r in ROWS]
    L = max(len(s) for s in seqs) // 4 * 4 + 4  # a multiple of the segment length
    ids = torch.full((len(seqs), L + 1), eod)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    targets = ids[:, 1:].clone()
    for i, s in enumerate(seqs):
        targets[i, len(s) - 1:] = -100  # nothing after the answer is learned
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(300):
        loss = F.cross_entropy(model(ids[:, :-1]).logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return {"untrained": untrained, "trained": save("trained"), "tok": tok, "eod": eod, "model": model.eval()}


def test_a_model_that_memorized_the_answers_scores_one_and_an_untrained_one_scores_near_chance(checkpoints):
    trained = evaluate(checkpoints["trained"], ["lory_toy_mc"])["results"]["lory_toy_mc"]["acc,none"]
    untrained = evaluate(checkpoints["untrained"], ["lory_toy_mc"])["results"]["lory_toy_mc"]["acc,none"]
    assert trained == 1.0
    assert untrained <= 0.5  # chance is 0.25 (4 choices); every answer is also a wrong choice elsewhere


def test_prompt_routing_scores_with_the_context_merge(checkpoints):
    results = evaluate(checkpoints["trained"], ["lory_toy_mc"], routing="prompt")["results"]["lory_toy_mc"]
    assert 0.25 < results["acc,none"] <= 1.0  # the model learned with segment routing; prompt routing differs


def test_rolling_perplexity_is_the_models_own_likelihood(checkpoints):
    got = evaluate(checkpoints["trained"], ["lory_toy_ppl"])["results"]["lory_toy_ppl"]
    model, tok, eod = checkpoints["model"], checkpoints["tok"], checkpoints["eod"]
    total, words = 0.0, 0
    with torch.no_grad():
        for r in ROWS:
            text = r["question"] + " " + r["choices"][r["answer"]]
            ids = torch.tensor([[eod] + tok.encode(text).ids])  # one window: shorter than seq_len
            logp = F.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            total += float(logp.gather(-1, ids[0, 1:, None]).sum())
            words += len(re.split(r"\s+", text))
    assert got["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-4)


def test_the_command_prints_lm_evals_table_and_writes_its_results(checkpoints, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["evaluate", "--ckpt_path", checkpoints["trained"], "--tasks", "lory_toy_mc,lory_toy_ppl",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lory_toy_mc" in printed and "lory_toy_ppl" in printed and "(0-shot, segment routing)" in printed
    assert json.loads(out.read_text())["tasks"]["lory_toy_mc"]["acc,none"] == 1.0
    assert main(["evaluate", "--ckpt_path", checkpoints["trained"]]) == 1
    assert "give tasks or groups" in capsys.readouterr().err


def test_the_paper_task_config_names_tasks_lm_eval_knows():
    import yaml
    from lm_eval.tasks import TaskManager

    groups = yaml.safe_load((TASKS.parent / "paper-downstream.yaml").read_text())["groups"]
    known = set(TaskManager().all_tasks)
    assert [g["name"] for g in groups] == ["commonsense reasoning", "reading comprehension", "closed-book QA",
                                           "text classification"]
    assert all(t in known for g in groups for t in g["tasks"])


def test_generate_until_is_lory_generate_cut_at_the_stop_string(checkpoints):
    from types import SimpleNamespace

    from lory_lightning.evaluate import LoryEvalLM
    from lory_lightning.model import generate

    model, tok, eod = checkpoints["model"], checkpoints["tok"], checkpoints["eod"]
    lm = LoryEvalLM(model, tok, eod, routing="prompt")
    question = ROWS[0]["question"]
    answer = ROWS[0]["choices"][ROWS[0]["answer"]]
    ids = tok.encode(question).ids
    full = tok.decode(generate(model, torch.tensor([ids]), 6, temperature=0, routing="prompt", eos_id=eod)[0, len(ids):]
                      .tolist())
    got = lm.generate_until([SimpleNamespace(args=(question, {"until": [answer[2:]], "max_gen_toks": 6}))])
    assert full.strip().startswith(answer)  # the memorized answer, greedily
    assert got == [full[:full.index(answer[2:])]]  # cut before the stop string
