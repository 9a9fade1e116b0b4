"""Swap a model's nn.Linear layers for another implementation (int8 weights, prepacked weights) in place."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_linears(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every nn.Linear under `module` (the output head included) with make(linear); returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
            count += 1
        else:
            count += replace_linears(child, make)
    return count
