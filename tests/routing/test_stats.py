"""Routing statistics on known routing weights."""

import math

import pytest
import torch

from lory_lightning.routing.specialization import SpecializationAccumulator
from lory_lightning.routing.stats import (activated, domain_expert_sums, expert_share, mutual_information,
                                            routing_entropy, segment_domain_counts)
from lory_lightning.model import Routing


def test_entropy_of_uniform_and_one_hot():
    E = 8
    assert routing_entropy(torch.full((3, 5, E), 1 / E)).item() == pytest.approx(math.log(E))
    onehot = torch.nn.functional.one_hot(torch.randint(0, E, (3, 5)), E).float()
    assert routing_entropy(onehot).item() == pytest.approx(0.0, abs=1e-12)


def test_expert_share_and_activation_rule():
    w = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]]])  # (1, 2, 4): threshold 2/E = 0.5
    torch.testing.assert_close(expert_share(w), torch.tensor([0.55, 0.25, 0.1, 0.1], dtype=torch.float64))
    assert activated(w).tolist() == [True, False, False, False]


def test_segment_domain_counts_and_weighted_sums():
    domains = torch.tensor([[0, 0, 1, 1, 1, 2]])  # T = 2 -> segments [0,0], [1,1], [1,2]
    counts = segment_domain_counts(domains, 2, 3)
    assert counts.tolist() == [[[2, 0, 0], [0, 2, 0], [0, 1, 1]]]
    weights = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
    sums = domain_expert_sums(weights, counts)
    assert sums.tolist() == [[2.0, 0.0], [0.5, 2.5], [0.5, 0.5]]


def test_mutual_information_bounds():
    tokens = torch.tensor([10.0, 10.0])
    separate = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # A -> expert 0, B -> expert 1
    assert mutual_information(separate, tokens).item() == pytest.approx(math.log(2))
    same = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    assert mutual_information(same, tokens).item() == pytest.approx(0.0, abs=1e-12)


def test_accumulator_scores_a_perfectly_specialized_model_maximal():
    # domain 0 sequences routed to expert 0, domain 1 to expert 1, in every layer and segment
    T, E = 4, 4
    domains = torch.tensor([[0] * 8, [1] * 8])  # (B=2, L=8): two segments each
    weights = torch.zeros(2, 2, E)
    weights[0, :, 0] = 1.0
    weights[1, :, 1] = 1.0
    routing = [Routing(weights.log(), weights), None, Routing(weights.log(), weights)]
    acc = SpecializationAccumulator(2, 2, E, T)
    for b in range(2):  # one sequence per batch: the sums do not depend on batching
        acc.update([Routing(r.logits[b:b + 1], r.weights[b:b + 1]) if r is not None else None for r in routing],
                   domains[b:b + 1])
    mean = acc.mean_weight()
    assert mean[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0] and mean[1, 1].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert acc.mutual_information() == pytest.approx([math.log(2), math.log(2)])
    assert acc.tokens.tolist() == [8.0, 8.0]


def test_expert_domain_entropy_on_crafted_routing():
    from lory_lightning.routing.stats import expert_domain_entropy

    # 3 domains, 4 experts: expert 0 only domain 0; expert 1 every domain alike; expert 2 two domains
    # alike; expert 3 no domain at all
    mean = torch.tensor([[0.6, 0.2, 0.2, 0.0], [0.0, 0.2, 0.8, 0.0], [0.0, 0.2, 0.8, 0.0]], dtype=torch.float64)
    got = expert_domain_entropy(mean)
    assert got[0].item() == pytest.approx(0.0, abs=1e-12)
    assert got[1].item() == pytest.approx(1.0)
    p = torch.tensor([0.2 / 1.8, 0.8 / 1.8, 0.8 / 1.8], dtype=torch.float64)
    assert got[2].item() == pytest.approx(float(-(p * p.log()).sum() / math.log(3)))
    assert math.isnan(got[3].item())
    # a domain without tokens (NaN row) is left out: two domains remain
    with_empty = torch.cat([mean, torch.full((1, 4), float("nan"), dtype=torch.float64)])
    assert expert_domain_entropy(with_empty)[1].item() == pytest.approx(1.0)
    assert expert_domain_entropy(mean[:1])[0].item() == 0.0  # one domain: nothing to spread over


def test_accumulator_reports_per_expert_domain_entropy():
    T, E = 4, 2
    domains = torch.tensor([[0] * 4, [1] * 4])
    weights = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])  # domain 0: expert 0; domain 1: both halves
    acc = SpecializationAccumulator(1, 2, E, T)
    acc.update([Routing(weights.log(), weights)], domains)
    # expert 0 gets 1.0 from domain 0 and 0.5 from domain 1: p = (2/3, 1/3); expert 1 only domain 1
    p = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    assert acc.expert_domain_entropy()[0] == pytest.approx([float(-(p * p.log()).sum() / math.log(2)), 0.0])
