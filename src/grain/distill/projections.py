"""Learnable linear maps from student to teacher hidden states, initialized to identity."""

from __future__ import annotations

import torch
from torch import nn


def matched_layers(num_layers: int, stride: int) -> list[int]:
    """Hidden-state indices matched in distillation: 0 (embeddings), stride, ..., num_layers."""
    layers = list(range(0, num_layers + 1, stride))
    if layers[-1] != num_layers:
        layers.append(num_layers)
    return layers


class HiddenProjections(nn.Module):
    def __init__(self, student_hidden: int, teacher_hidden: int, count: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in range(count))
        for linear in self.maps:
            nn.init.eye_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        return [linear(state) for linear, state in zip(self.maps, states)]
