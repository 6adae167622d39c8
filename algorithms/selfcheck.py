"""The self-check on first use: a vectorised engine's first meta-gradient against the plain loop's.

Why: the generic engine runs any network and rule through torch.func and torch.compile, whose
transforms may be wrong for an op nobody here tested; nothing else would notice (issue 21: the
compiled engine's meta-gradient through LayerNorm was off by 1.2e-4 in float64, from torch.func's
batching rule for layer_norm's double backward, pytorch/functorch#534). The plain `torch` loop
(per-task autograd, no transforms) is the reference.

What: for a run whose network, rule or loss is not the suite's own (`needs_check`), the generic
learner's first `meta_gradient` first computes, on a float64 copy of itself and of the loop (same
weights, rule and extra meta-parameters), the meta-gradient of the first `CHECK_TASKS` tasks of its
batch, and compares them per parameter: max |g − g_loop| / max |g_loop| (`relative_difference`).
Beyond `TOLERANCE` the torch.func path (compiled) is replaced by the eager one (batched autograd:
the transforms are only in the forward there), checked the same way; if that disagrees too, the run
refuses (`SelfCheckError`, naming the parameter and the difference). The learner's `self_check`
says what passed; the job copies it into the record, and `engine` says when the eager path replaced
the compiled one.

Decisions: built-ins skip the check (their engines are held to the loop by the tests, and their
numbers stay bitwise); the check's time is a one-off first-call cost, recorded in
`compile_seconds` with the compile, never in the step time (a compiled run whose transforms pass
compiles twice: the float64 copy, then its own program); a module that cannot be copied to
float64 is checked in its own dtype with `TOLERANCE_LOW` (float32 rounding through an inner loop
reaches ~1e-5 relative).
"""
from __future__ import annotations

import copy
import inspect
import time

import torch

TOLERANCE = 1e-7  # float64: the engines agree to ~1e-13 relative; a wrong derivative is far above
TOLERANCE_LOW = 1e-3  # when float64 is not possible
CHECK_TASKS = 4  # a small batch: the check costs a few of the run's steps, not a compile's worth


class SelfCheckError(ValueError):
    """The engine's meta-gradient disagrees with the plain loop's; the message names the parameter."""


def _builtin(obj) -> bool:
    return type(obj).__module__.startswith("algorithms.")


def needs_check(learner) -> bool:
    """Whether anything the learner runs is not the suite's own: a plug-in network, rule or loss."""
    from algorithms.network import PluginNetwork

    loss = getattr(getattr(learner, "problem", None), "loss", None)  # "mse", "cross-entropy" or a callable
    return isinstance(learner.network, PluginNetwork) or not _builtin(learner.rule) or callable(loss)


#: a parameter's scale is at least this fraction of the largest parameter's: a gradient that is zero
#: but for rounding (a bias before a BatchNorm cancels) would otherwise compare rounding with rounding
SCALE_FLOOR = 1e-6


def relative_difference(grads, reference, names) -> tuple[float, str]:
    """The largest per-parameter max |g − r| / max(max |r|, SCALE_FLOOR · the largest max |r|) and
    the parameter's name."""
    worst, where = 0.0, names[0]
    scales = [r.abs().max().item() for r in reference]
    floor = SCALE_FLOOR * max(scales, default=0.0)
    for name, g, r, scale in zip(names, grads, reference, scales):
        scale = max(scale, floor)
        diff = (g - r).abs().max().item()
        value = diff / scale if scale > 0 else diff
        if not value <= worst:  # NaN counts as the worst
            worst, where = value, name
    return worst, where


def _rule_copy(rule):
    """A copy of the rule for the check, so that the run's rule object runs once per step as it
    would unchecked (as the engine's elementwise check does); one that cannot be copied is used
    itself (a rule keeping Python state is refused anyway, `rules.check_no_python_state`)."""
    try:
        return copy.deepcopy(rule)
    except Exception:  # noqa: BLE001 - whatever deepcopy raises, the answer is the same
        return rule


def _reference(learner, batch, iteration, dtype, rule=None):
    """The plain loop's meta-gradient with the learner's weights, rule and extra meta-parameters."""
    from algorithms.loop_backends import TorchRuleLearner

    cls = type("SelfCheckReference", (TorchRuleLearner,), {"rule": rule or learner.rule})
    options = {"problem": learner.problem} if "problem" in inspect.signature(cls.__init__).parameters else {}
    ref = cls(learner.hp, torch.Generator().manual_seed(0), device=learner.device, network=learner.network, **options)
    ref.net = copy.deepcopy(learner.net).to(dtype)
    ref.extra = [e.detach().to(dtype).clone().requires_grad_() for e in learner.extra]
    ref.meta_parameters = ref._meta_parameters()
    return ref.meta_gradient(batch, iteration)[1]


def _twin(learner, dtype, path: str, rule):
    """A copy of the generic learner in `dtype` with fresh programs, running `path`: "eager"
    (batched autograd), "torch.func" (the compiled path's grad transforms, not compiled) or
    "compiled" (its own compile)."""
    twin = copy.copy(learner)
    twin.__dict__.update(_programs={}, _direct_steps={}, compile_seconds=0.0, compile=path != "eager",
                         _self_checked=True)
    if path == "torch.func":
        twin._compile = lambda fn, fullgraph=True: fn
    twin.net = copy.deepcopy(learner.net).to(dtype)
    twin.extra = [e.detach().to(dtype).clone().requires_grad_() for e in learner.extra]
    twin.meta_parameters = list(twin.net.parameters()) + twin.extra
    twin.program = copy.copy(learner.program)
    twin.program.net, twin.rule, twin.program.rule = twin.net, rule, rule
    return twin


def run(learner, batch, iteration: int) -> None:
    """The check, before the learner's first meta-gradient (see the module docstring). Sets
    `learner.self_check` (and `compile` / `engine` when the eager path replaces the compiled one).

    A compiled learner's path is checked in two stages: its grad transforms uncompiled (cheap: a
    transform's defect, like LayerNorm's, shows here without a compile), then compiled (a compiler
    defect); either failing, the eager path is checked and replaces it."""
    if not needs_check(learner):
        return
    started = time.perf_counter()
    small = batch.select(slice(0, CHECK_TASKS))
    dtype, tolerance = torch.float64, TOLERANCE
    try:
        copied = copy.deepcopy(learner.net)
    except Exception as error:  # noqa: BLE001 - whatever deepcopy raises, the answer is the same
        raise SelfCheckError(f"self-check: network {learner.network.name!r} cannot be copied ({error}); "
                             "the check runs on a copy") from None
    try:
        copied.to(dtype)
    except Exception:  # noqa: BLE001 - a module that cannot be cast: checked in its own dtype
        dtype, tolerance = learner.meta_parameters[0].dtype, TOLERANCE_LOW
    small = small.map(lambda t: t.to(dtype) if t.is_floating_point() else t)
    names = [name for name, _ in learner.net.named_parameters()] + [f"extra[{i}]" for i in range(len(learner.extra))]
    rule = _rule_copy(learner.rule)
    reference = _reference(learner, small, iteration, dtype, rule)
    results: dict[str, tuple[float, str]] = {}

    def agrees(path: str) -> bool:
        grads = _twin(learner, dtype, path, _rule_copy(rule)).meta_gradient(small, iteration)[1]
        results[path] = relative_difference(grads, reference, names)
        return results[path][0] <= tolerance

    def said(path: str) -> str:
        return f"{path} path {results[path][0]:.2g} at {results[path][1]}"

    setting = f"{dtype}, tolerance {tolerance:g}, {len(small)} tasks"
    compiled_ok = learner.compile and agrees("torch.func") and agrees("compiled")
    if not compiled_ok and not agrees("eager"):
        raise SelfCheckError(f"self-check failed: the {learner.engine} engine's meta-gradient differs from the plain "
                             f"torch loop's by a max relative difference of {'; '.join(map(said, results))} "
                             f"({setting}); run this network/rule on backend 'torch'")
    passing = "compiled" if compiled_ok else "eager"
    learner.self_check = f"passed: max relative difference to the torch loop {said(passing)} ({setting})"
    failed = [path for path, (value, _) in results.items() if not value <= tolerance]
    if failed:  # only a compiled learner gets here with a failure: the eager path replaces it
        learner.compile = False
        learner.engine = f"generic (eager: the {failed[0]} path failed the self-check)"
        learner.self_check += f"; failed: {'; '.join(map(said, failed))}, so the eager path runs"
    learner.compile_seconds += time.perf_counter() - started
