"""Per-step query-loss weights: plain MAML (last step only) and MAML++'s multi-step loss."""
from __future__ import annotations


def last_step_weights(inner_steps: int) -> list[float]:
    """MAML: only the query loss after the final inner step (index S of 0..S) counts."""
    return [0.0] * inner_steps + [1.0]


def msl_weights(inner_steps: int, iteration: int, anneal_iters: int) -> list[float]:
    """MAML++ (Antoniou et al. 2019) multi-step loss weights over steps 0..S (step 0 gets 0).

    Starts uniform (1/S on each step 1..S). Non-final weights decay linearly by
    1/(S·anneal_iters) per iteration to a floor of 0.03/S; the final weight takes the rest,
    so the weights always sum to 1 and, once annealed, sit almost all on the last step.
    This is `get_per_step_loss_importance_vector` of the MAML++ code, with iterations for epochs.
    """
    if inner_steps == 0:
        return [1.0]
    s = inner_steps
    decay = 1.0 / s / anneal_iters
    floor = 0.03 / s
    non_final = [max(1.0 / s - iteration * decay, floor) for _ in range(s - 1)]
    final = 1.0 - sum(non_final)
    return [0.0] + non_final + [final]
