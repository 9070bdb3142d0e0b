import math

import torch

from lory_lightning.model import Routing, load_balancing_loss, router_z_loss


def test_load_balancing_is_one_for_uniform_and_e_for_collapsed():
    E = 4
    uniform = Routing(logits=torch.zeros(2, 8, E), weights=torch.full((2, 8, E), 1 / E))
    assert load_balancing_loss([uniform, None]).item() == 1.0
    collapsed_logits = torch.full((2, 8, E), -1e4)
    collapsed_logits[..., 2] = 0.0
    collapsed = Routing(logits=collapsed_logits, weights=collapsed_logits.softmax(-1))
    assert abs(load_balancing_loss([collapsed]).item() - E) < 1e-6


def test_z_loss_value():
    logits = torch.tensor([[[0.0, 0.0]]])  # logsumexp = log 2
    r = Routing(logits=logits, weights=logits.softmax(-1))
    assert abs(router_z_loss([r]).item() - math.log(2) ** 2) < 1e-7
