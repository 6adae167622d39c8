"""MAML with an SGD-momentum or an Adam inner loop, as metabench plug-ins.

Each task adapts with its own inner optimiser, started afresh (zero buffers / moments) for
every task and threaded through its S steps; second-order MAML differentiates through the
optimiser's state too. The state is declared (`init_state`, `update_with_state`; see
`algorithms.rules`), never kept on the rule object: the engines batch the update over tasks.

Loaded with `--plugin examples/plugin_inner_optim/inner_optim.py`, it registers
`maml-momentum` and `maml-adam`, which run on the plain autograd loop (`torch`), the generic
vectorised engine (`generic`, eager or `compile = true`) and `func` (the generic engine: the
hand-written pass is stateless SGD); learn2learn and higher are not offered (no state).

Decisions: both use LR_base as their inner rate; momentum 0.9 in PyTorch's convention
(v <- mu*v + g, p <- p - lr*v, no dampening); Adam with betas (0.9, 0.999), bias-corrected at
step t = step + 1, and eps inside the square root, sqrt(v_hat + eps^2), not torch.optim.Adam's
sqrt(v_hat) + eps: a gradient entry that is exactly 0 (a ReLU unit dead on a task's support
points) makes v_hat 0, where sqrt's derivative is infinite and the second-order meta-gradient
would be NaN. The evaluation may take more steps than training did: the state carries on.
"""
import torch

from algorithms import register_algorithm
from algorithms.rules import InnerRule


class MomentumInner(InnerRule):
    """MAML whose inner loop is SGD with heavy-ball momentum, one velocity per parameter."""

    momentum = 0.9

    def init_state(self, params, extra, hp):
        return [torch.zeros_like(p) for p in params]

    def update_with_state(self, params, grads, extra, step, hp, state):
        new_params, new_state = [], []
        for p, g, v in zip(params, grads, state):
            if g is not None:
                v = self.momentum * v + g
                p = p - hp.lr_base * v
            new_params.append(p)
            new_state.append(v)
        return new_params, new_state


class AdamInner(InnerRule):
    """MAML whose inner loop is Adam: first and second moments per parameter (state: all m, then all v)."""

    betas = (0.9, 0.999)
    eps = 1e-8

    def init_state(self, params, extra, hp):
        return [torch.zeros_like(p) for p in params] * 2

    def update_with_state(self, params, grads, extra, step, hp, state):
        n, (beta1, beta2), t = len(params), self.betas, step + 1
        first, second = list(state[:n]), list(state[n:])
        new_params = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None:
                first[i] = beta1 * first[i] + (1 - beta1) * g
                second[i] = beta2 * second[i] + (1 - beta2) * g * g
                m_hat = first[i] / (1 - beta1 ** t)
                v_hat = second[i] / (1 - beta2 ** t)
                p = p - hp.lr_base * m_hat / torch.sqrt(v_hat + self.eps ** 2)
            new_params.append(p)
        return new_params, first + second


register_algorithm("maml-momentum", MomentumInner())
register_algorithm("maml-adam", AdamInner())
