"""MAML++'s LSLR (Antoniou et al. 2019, "How to train your MAML"), as a metabench plug-in.

Learned per-Layer per-Step Learning Rates: every parameter tensor (each layer's weight and
bias) gets its own inner rate for each of the S inner steps, initialised at LR_base and
meta-learned with the initialisation. Everything else is MAML.

This module is the whole algorithm. Loaded with `--plugin examples/plugin_lslr/lslr.py`
(or `plugins = [...]` in a sweep file), it runs on the plain autograd loop (`torch`), the
generic vectorised engine (`generic`) and `func` (which runs it on the generic engine: the
hand-written reverse pass covers fixed and per-entry rates only), and it is evaluated with
its learned per-step rates.
"""
import torch

from algorithms import register_algorithm
from algorithms.rules import InnerRule


class LSLR(InnerRule):
    """MAML with a learned rate per parameter tensor and per inner step."""

    fast_update = None  # no hand-written fast path for this update

    def extra(self, params, hp):
        # one rate per (tensor, step), at LR_base: before any meta-update LSLR is MAML
        return [torch.full((hp.inner_steps,), hp.lr_base, dtype=p.dtype, device=p.device) for p in params]

    def update(self, params, grads, extra, step, hp):
        # one task's inner step `step` (0-based); grads[i] is None for a parameter that does not adapt.
        # The evaluation may take more steps than training did (eval_steps 10 > S): beyond S the
        # last learned rate is reused (a decision; Antoniou et al. evaluate at S only).
        last = hp.inner_steps - 1
        return [p if g is None else p - rates[min(step, last)] * g for p, g, rates in zip(params, grads, extra)]


register_algorithm("lslr", LSLR())
