"""One job: train a program (a single cell, or an ensemble of cells trained together) and
turn it into one record per cell. Failures become records; nothing here writes files.
"""
from __future__ import annotations

import math
import platform
import resource
import time
import traceback
from dataclasses import asdict

import torch

from algorithms import get_algorithm
from algorithms.evaluation import evaluate, initial_gradient_norm
from algorithms.functional import adapt, expand_per_task
from algorithms.network import forward
from benchmarks.config import Cell, Settings
from benchmarks.fingerprint import fingerprint
from benchmarks.training import meta_train
from tasks import evaluation_set, get_task

QUALITATIVE_STEPS = (0, 1, 10)
PROBE_SEED_OFFSET = 7  # the fixed probe batch for gradient norms (validation stream, own offset)
# A training loss this many times the MSE of predicting 0 (the targets' mean square on the
# probe batch) counts as diverged even while it is still finite: with LR_base far too large
# the float32 loss can sit at 1e19 for thousands of iterations without overflowing.
DIVERGENCE_FACTOR = 1e4


def _family(cell: Cell, settings: Settings, k_shot: int | None = None):
    return get_task(cell.task, k_shot=k_shot or cell.k_shot, n_query=settings.n_query, **settings.task_params)


def _qualitative(adaptation, settings: Settings, k_shot: int) -> dict:
    """Fits on one fixed `sine-half` task: truth, support, and predictions after 0, 1, 10 steps."""
    family = get_task("sine-half", k_shot=k_shot, n_query=1)
    task = family.sample(1, torch.Generator().manual_seed(12345))
    x = torch.linspace(-5, 5, 100).view(1, -1, 1)
    lrs = [lr if not isinstance(lr, torch.Tensor) else lr.unsqueeze(0) for lr in adaptation.lrs]
    preds = {}
    with torch.enable_grad():
        start = [p.cpu().requires_grad_() for p in expand_per_task([p.detach() for p in adaptation.params], 1)]
        lrs = [lr.cpu() if isinstance(lr, torch.Tensor) else lr for lr in lrs]
        for step, params in enumerate(adapt(start, task.x_support, task.y_support, lrs, max(QUALITATIVE_STEPS), False)):
            if step in QUALITATIVE_STEPS:
                preds[str(step)] = forward(params, x).detach().flatten().tolist()
    truth = family.function(x, task.amplitude, task.phase)
    return {"x": x.flatten().tolist(), "truth": truth.flatten().tolist(),
            "support_x": task.x_support.flatten().tolist(), "support_y": task.y_support.flatten().tolist(),
            "pred": preds}


def run_job(cells: list[Cell], settings: Settings, threads: int | None = None) -> list[dict]:
    """Train one job and return one record per cell (never raises: failures become records)."""
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_job(cells, settings)
    except Exception as error:  # recorded, and the sweep goes on
        return [_record(cell, settings, status="failed", error=f"{type(error).__name__}: {error}",
                        traceback=traceback.format_exc()) for cell in cells]


def _record(cell: Cell, settings: Settings, **fields) -> dict:
    return {"cell_id": cell.cell_id, "cell": asdict(cell), "settings": asdict(settings),
            "fingerprint": fingerprint(cell, settings),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "processor": platform.processor(),
                            "threads": torch.get_num_threads()},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}


def _run_job(cells: list[Cell], settings: Settings) -> list[dict]:
    base = cells[0]
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    family = _family(base, settings)
    hps = [c.hyperparams(settings.msl_anneal_iters or None) for c in cells]
    generators = [torch.Generator().manual_seed(c.seed) for c in cells]
    init_generators = [torch.Generator().manual_seed(c.seed + 1) for c in cells]  # weights: own stream
    if len(cells) > 1:
        learner = get_algorithm(base.algorithm, base.backend, hps, init_generators, device=settings.device)
    else:
        learner = get_algorithm(base.algorithm, base.backend, hps[0], init_generators[0], device=settings.device)
    eval_ks = sorted(set(settings.eval_k_shot) | {base.k_shot})
    eval_sets = {(split, k): evaluation_set(family, split, n, k_shot=k).to(device)
                 for split, n in (("validation", settings.n_validation_tasks), ("test", settings.n_test_tasks))
                 for k in eval_ks}
    probe = evaluation_set(family, "validation", base.meta_batch, seed_offset=PROBE_SEED_OFFSET).to(device)
    eval_at = {base.iterations} | ({i for i in range(settings.eval_every, base.iterations + 1, settings.eval_every)}
                                   if settings.eval_every else set())
    log_at = eval_at | set(range(settings.log_every, base.iterations + 1, settings.log_every))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    curves = [[] for _ in cells]
    evaluations = [[] for _ in cells]
    diverged = [None] * len(cells)  # the reason, once a member's training loss blows up
    blowup = DIVERGENCE_FACTOR * float(probe.y_query.pow(2).mean())
    train_seconds = 0.0
    for report in meta_train(learner, family, generators, base.iterations, log_at):
        train_seconds = report["train_seconds"]
        for m in range(len(cells)):
            loss = float(report["loss"][m])
            if diverged[m] is not None:
                continue
            if not math.isfinite(loss) or loss > blowup:
                kind = "non-finite" if not math.isfinite(loss) else \
                    f"above {DIVERGENCE_FACTOR:g} x the zero predictor's MSE ({blowup / DIVERGENCE_FACTOR:.3g})"
                diverged[m] = f"training loss {loss:.3g} at iteration {report['iteration']}: {kind}"
                continue
            adaptation = learner.adaptation(m)
            curves[m].append({"iteration": report["iteration"], "loss": loss,
                              "grad_norm": initial_gradient_norm(adaptation, probe)})
            if report["iteration"] in eval_at:
                with torch.no_grad():
                    for (split, k), test in eval_sets.items():
                        frame = evaluate(adaptation, test, settings.eval_steps)
                        frame.insert(0, "eval_k_shot", k)
                        frame.insert(0, "split", split)
                        frame.insert(0, "iteration", report["iteration"])
                        evaluations[m].extend(frame.to_dict("records"))
        if all(d is not None for d in diverged):
            break
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    sec_per_iter = train_seconds / max(1, max(c["iteration"] for c in curves[0]) if curves[0] else base.iterations)
    records = []
    for m, cell in enumerate(cells):
        common = dict(sec_per_iter=sec_per_iter, ensemble_size=len(cells), sec_per_iter_member=sec_per_iter / len(cells),
                      peak_memory_mb=peak / 2 ** 20, device=str(device), curve=curves[m])
        if diverged[m] is None:  # a non-finite evaluation MSE (e.g. 10 steps of a learned rate) stays visible
            records.append(_record(cell, settings, status="ok", error=None, evaluations=evaluations[m],
                                   qualitative=_qualitative(learner.adaptation(m), settings, cell.k_shot), **common))
        else:
            records.append(_record(cell, settings, status="diverged",
                                   error=diverged[m], evaluations=[], **common))
    return records


