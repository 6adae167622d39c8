"""Finn et al.'s base learner (1 -> 40 -> 40 -> 1, ReLU), as a module and as a pure function.

The module feeds learn2learn and higher; the pure function `forward` feeds the vectorised
engine and the shared evaluation. Both use torch's layout (weight [out, in], bias [out]),
so a module's parameters are the function's parameters with no conversion. `forward`
accepts any leading batch dimensions on the parameters (per task, per ensemble member).
"""
from __future__ import annotations

import math

import torch
from torch import nn

LAYER_SIZES = (1, 40, 40, 1)


def make_network(generator: torch.Generator, sizes=LAYER_SIZES, dtype=torch.float32, device="cpu") -> nn.Sequential:
    """The network with torch's default Linear init, drawn from `generator` (not the global RNG)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out, dtype=dtype)
        with torch.no_grad():
            # Same distribution as nn.Linear.reset_parameters, with an explicit generator.
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """MLP forward: params = [w1, b1, w2, b2, ...] with batch dims matching x's [..., N, in]."""
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        weight, bias = params[2 * i], params[2 * i + 1]
        h = torch.matmul(h, weight.transpose(-1, -2)) + bias.unsqueeze(-2)
        if i < n_layers - 1:
            h = torch.relu(h)
    return h


def task_losses(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per task: x, y [..., tasks, points, 1] -> [..., tasks]."""
    return (forward(params, x) - y).pow(2).mean(dim=(-2, -1))
