"""CAVIA (Zintgraf et al. 2019, "Fast Context Adaptation via Meta-Learning"), as a metabench plug-in.

A context vector, concatenated to the input of the network's first layer, is the only thing a
task adapts: it starts at zero for every task, takes S SGD steps on the support loss, and is
never meta-learned (no meta-gradient, no outer Adam). The network's parameters (its first layer
reading 1 + 4 inputs) are meta-learned through the adapted context, second order. Declared with
`context` (`algorithms.rules`): every engine feeds the context with the inputs and resets it per
task, and the evaluation adapts the same way.

Loaded with `--plugin examples/plugin_cavia/cavia.py`, it registers `cavia`, which runs on the
plain autograd loop (`torch`), the generic vectorised engine (`generic`, eager or
`compile = true`) and `func` (the generic engine); learn2learn and higher are not offered.

Decisions: 4 context parameters (the paper's regression set-up); the context's inner rate is the
cell's LR_base (the paper uses 1.0 for sine regression: `lr_base = 1.0` in cavia.toml), so a
sweep over LR_base applies to it.
"""
import torch

from algorithms import register_algorithm
from algorithms.rules import InnerRule


class CAVIA(InnerRule):
    """Only a zero-reset context vector adapts (plain SGD at LR_base); the network is meta-learned."""

    size = 4
    adapted_layers = 0  # none of the network's parameters adapt

    def context(self, hp):
        return [torch.zeros(self.size)]


register_algorithm("cavia", CAVIA())
