"""The second study's report sections from crafted result files: the near-copy probe's corpora and
verdicts, and the arms' seeds as the design has them."""

from lory_lightning.replication.report import Study
from lory_lightning.replication.report_second import near_copy_lines, seeds_sentence

TOKENS = {"a": 1000, "b": 3000}


def _result(setting, seed, lp, tokens=TOKENS):
    sums = {d: {"nll_sum": lp * 1000.0, "tokens": 1000} for d in ("a", "b")}
    return {"key": f"{setting}-seed{seed}", "setting": setting, "seed": seed, "validation": sums, "heldout": {},
            "train_tokens_by_domain": dict(tokens)}


def crafted(dedup_effect):
    """Dense similarity - random differences of -2, 0, +2, -1, +1 log points (sd 1.58); the probe's
    de-duplicated runs ``dedup_effect`` log points from their thinned twins."""
    results = []
    for seed, wobble in enumerate([-0.02, 0.0, 0.02, -0.01, 0.01]):
        results += [_result("dense-similarity", seed, 5.0 + wobble), _result("dense-random", seed, 5.0)]
    for model in ("dense", "lory"):
        results += [_result(f"{model}-similarity-dedup-0.9", 0, 5.0 + dedup_effect / 100, {"a": 800, "b": 2400}),
                    _result(f"{model}-similarity-thinned", 0, 5.0, {"a": 801, "b": 2395})]
    return Study(results)


def test_the_probe_states_each_corpus_and_reads_a_difference_against_the_seed_spread():
    text = "\n".join(near_copy_lines(crafted(-4.0)))
    assert "| de-duplicated at 0.99 (every other run) | 1k (25.0%) | 3k (75.0%) | 4k |" in text
    assert "| de-duplicated at 0.9 | 1k (25.0%) | 2k (75.0%) | 3k |" in text
    assert "| 0.99, thinned at random | 1k (25.1%) | 2k (74.9%) | 3k |" in text
    assert "- dense: with near-copies removed instead of as many random documents, perplexity is 4.00 log points " \
           "lower (ratio 0.961; one seed)." in text
    assert "sd 1.58 log points over 5 seeds) a one-seed difference beyond 3.16" in text and "is a finding" in text
    small = "\n".join(near_copy_lines(crafted(+1.0)))
    assert "1.00 log points higher (ratio 1.010; one seed)" in small and "is not a finding" in small


def test_a_probe_without_results_says_so():
    assert near_copy_lines(Study([_result("dense-similarity", 0, 5.0)])) == [
        "The near-copy probe's runs have no result files yet."]


def test_seeds_sentence_follows_the_design():
    sentence = seeds_sentence()
    assert "`dense-similarity-equal-compute` at 5 seeds" in sentence
    assert "`remoe-similarity` at 3 seeds" in sentence and "`lory-similarity-thinned` at 1 seed." in sentence
