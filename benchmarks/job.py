"""One job: train a program (a single cell, or an ensemble of cells trained together) and
turn it into one record per cell. Failures become records; nothing here writes files, except
the optional TensorBoard event files (`tensorboard = true`: `TensorBoard`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import resource
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

import numpy as np

from algorithms import get_algorithm, get_learner_class
from algorithms import generic_engine as generic
from algorithms.evaluation import (adaptation_curve, initial_gradient_norm, metric_curves, needs_generic, summarize,
                                   summarize_problem)
from algorithms.functional import adapt, expand_per_task
from algorithms.network import sized, with_context
from benchmarks import artifacts as store
from benchmarks import statistics
from benchmarks.compile_choice import job_compile_choice
from benchmarks.config import Cell, Settings, cell_family, learner_options, training_key
from benchmarks.fingerprint import fingerprint
from benchmarks.plugins import load_plugins
from benchmarks.speed.measure import tune_malloc
from benchmarks.training import meta_train
from tasks import TaskBatch, evaluation_set, get_task
from tasks.problem import MSE, REGRESSION, Problem, problem_of

QUALITATIVE_STEPS = (0, 1, 10)
PROBE_SEED_OFFSET = 7  # the fixed probe batch for gradient norms (validation stream, own offset)
# A training loss this many times the error scale counts as diverged even while it is still
# finite: with LR_base far too large the float32 loss can sit at 1e19 for thousands of iterations
# without overflowing. The scale (`statistics.error_scale`, the same as the evaluation's blow-ups)
# is the larger of the MSE of predicting 0 (the targets' mean square on the probe batch) and the
# member's untrained network's MSE on zero targets (its outputs' mean square on the probe's query
# points, before the first step): free of the targets' scale, so targets of 1e-4 are not
# "diverged" at an untrained network's ordinary error. On sine-scale targets the zero predictor's
# is the larger (about 4 against 0.02-0.5), so the threshold is exactly the zero predictor's x 1e4.
DIVERGENCE_FACTOR = 1e4


def _qualitative(adaptation, settings: Settings, k_shot: int) -> dict:
    """Fits on one fixed `sine-half` task: truth, support, and predictions after 0, 1, 10 steps.
    The task's name is stored with them, so the figure need not assume it."""
    name = "sine-half"
    family = get_task(name, k_shot=k_shot, n_query=1)
    task = family.sample(1, torch.Generator().manual_seed(12345))
    x = torch.linspace(-5, 5, 100).view(1, -1, 1)
    n = len(adaptation.params)  # past the network's parameters: a rule's context vectors, fed with x
    preds = {str(step): _short(adaptation.network.apply(params[:n], with_context(x, params[n:])))
             for step, params in enumerate(_adapted_on_cpu(adaptation, task)) if step in QUALITATIVE_STEPS}
    truth = family.function(x, task.params)
    return {"task": name, "x": _short(x), "truth": _short(truth), "support_x": _short(task.x_support),
            "support_y": _short(task.y_support), "pred": preds}


def _adapted_on_cpu(adaptation, task):
    """The parameters after 0..max(QUALITATIVE_STEPS) steps on `task`'s support set, on the CPU."""
    steps = max(QUALITATIVE_STEPS)
    if needs_generic(adaptation):  # the learner's own rule, or a network without the fast path
        on_cpu = dataclasses.replace(adaptation, params=[p.detach().cpu() for p in adaptation.params],
                                     lrs=[lr.cpu() if isinstance(lr, torch.Tensor) else lr for lr in adaptation.lrs],
                                     extra=[e.detach().cpu() for e in adaptation.extra])
        yield from generic.adapt_tasks(on_cpu, task.x_support, task.y_support, steps)
        return
    lrs = [lr.unsqueeze(0).cpu() if isinstance(lr, torch.Tensor) else lr for lr in adaptation.lrs]
    with torch.enable_grad():
        start = [p.cpu().requires_grad_() for p in expand_per_task([p.detach() for p in adaptation.params], 1)]
        yield from adapt(start, task.x_support, task.y_support, lrs, steps, False)


def _short(t: torch.Tensor) -> list[float]:
    """float32 values as their shortest exact decimal (0.12345679, not 0.12345679104328156)."""
    return [float(str(v)) for v in t.detach().cpu().flatten().numpy()]


def evaluation_sets(family, settings: Settings, eval_ks, device) -> dict[tuple[str, int], list[TaskBatch]]:
    """The fixed evaluation tasks per (split, K): `n_test_sets` independent test sets (set j
    drawn from the test stream's seed + j, so set 0 is the classic 600-task set), one validation set,
    each task with `n_eval_query` query points (`Settings.eval_query_points`: "k" is K)."""
    sets = {}
    for k in eval_ks:
        q = settings.eval_query_points(k)
        sets[("validation", k)] = [evaluation_set(family, "validation", settings.n_validation_tasks, k_shot=k,
                                                  n_query=q).to(device)]
        sets[("test", k)] = [evaluation_set(family, "test", settings.n_test_tasks, k_shot=k, n_query=q,
                                            seed_offset=j).to(device) for j in range(settings.n_test_sets)]
    return sets


def zero_predictor_mse(sets: dict[tuple[str, int], list[TaskBatch]], problem: Problem = REGRESSION
                       ) -> dict[tuple[str, int], float]:
    """Per (split, K): the query MSE of predicting 0, averaged over all its tasks (the blow-up
    yardstick); NaN for a metric the yardstick does not apply to (`Metric.scaled_blowups`)."""
    if not problem.metric.scaled_blowups:
        return {key: float("nan") for key in sets}
    return {key: float(torch.cat([b.y_query.pow(2).mean(dim=(1, 2)) for b in batches]).double().mean())
            for key, batches in sets.items()}


def untrained_mse(adaptation, probe: TaskBatch) -> float:
    """The network's MSE on zero targets at the probe's query points (its outputs' mean square):
    how large an untrained network's outputs are, whatever the targets (`statistics.error_scale`)."""
    silent = dataclasses.replace(probe, y_query=torch.zeros_like(probe.y_query))
    with torch.no_grad():
        return float(adaptation_curve(adaptation, silent, 0).double().mean())


def _divergence(loss: float, zero: float, untrained: float, problem: Problem = REGRESSION) -> str | None:
    """Why a training loss counts as diverged (None: it does not); see DIVERGENCE_FACTOR. A loss
    other than MSE is judged by finiteness alone: the yardstick is made of MSEs."""
    if not problem.is_mse:
        return None if math.isfinite(loss) else "non-finite"
    scale = statistics.error_scale(zero, untrained)
    if math.isfinite(loss) and loss <= DIVERGENCE_FACTOR * scale:
        return None
    if not math.isfinite(loss):
        kind = "non-finite"
    elif scale == zero:  # the words of every record before the untrained network's term
        kind = f"above {DIVERGENCE_FACTOR:g} x the zero predictor's MSE ({zero:.3g})"
    else:
        kind = (f"above {DIVERGENCE_FACTOR:g} x the error scale {scale:.3g} (the untrained network's MSE on zero "
                f"targets {untrained:.3g}; the zero predictor's {zero:.3g})")
    return kind


def _curves(adaptation, batch: TaskBatch, steps: int, problem: Problem):
    """(query loss, the problem's metric), each [steps + 1, tasks]; for MSE they are one tensor,
    computed as it always was (stored numbers stay bitwise)."""
    if problem.is_mse and problem.metric == MSE:
        losses = adaptation_curve(adaptation, batch, steps, problem)
        return losses, losses
    return metric_curves(adaptation, batch, steps, problem)


def evaluate_sets(adaptation, sets, steps: int, iteration: int, problem: Problem = REGRESSION):
    """Summary rows (one per split, K and step) and each task's metric values [steps + 1, tasks]
    per (split, K): the stored "errors" (MSE for the sine families, accuracy for classification).

    Sets are adapted one at a time (bounded memory; a task's numbers do not depend on its
    neighbours). The mean and CI are over all tasks of all sets; with several sets,
    `set_sd` is the standard deviation of the per-set means (the spread a reader would see
    between independent 600-task test sets) and `n_sets` their count.
    """
    rows, errors = [], {}
    with torch.no_grad():
        for (split, k), batches in sets.items():
            parts = [_curves(adaptation, b, steps, problem) for b in batches]
            losses = torch.cat([metric for _, metric in parts], dim=1)  # what is stored: the metric per task
            if problem.is_mse and problem.metric == MSE:
                frame = summarize(losses)
            else:
                frame = summarize_problem(torch.cat([loss for loss, _ in parts], dim=1), losses, problem)
            frame.insert(0, "eval_k_shot", k)
            frame.insert(0, "split", split)
            frame.insert(0, "iteration", iteration)
            frame["n_sets"] = len(batches)
            set_means = losses.double().view(losses.shape[0], len(batches), -1).mean(2)
            frame["set_sd"] = set_means.std(1).cpu().numpy() if len(batches) > 1 else np.nan
            rows.extend(frame.to_dict("records"))
            errors[(split, k)] = losses.cpu().numpy()
    return rows, errors


class TensorBoard:
    """Live training curves, one `SummaryWriter` per member under `folder/<cell id>/`: what the
    record's `curve` holds (training loss, initial-gradient norm) at each log point, and at each
    evaluation the metric per split after 1 and `eval_steps` steps, tagged like `test/mse@1`
    (`validation-K5/accuracy@10` for an extra evaluated K). Only numbers already computed are
    written, so no number changes. A cell trains only when it has no finished record, so event
    files already in its folder are from an unfinished attempt: they are removed, and the folder
    says what the record says."""

    def __init__(self, cells: list[Cell], folder: Path, settings: Settings):
        from torch.utils.tensorboard import SummaryWriter  # imported only when on: an optional extra

        self.cells, self.steps, self.writers = cells, sorted({min(1, settings.eval_steps), settings.eval_steps}), []
        try:
            for cell in cells:
                member = Path(folder) / cell.cell_id
                for stale in member.glob("events.out.tfevents.*"):
                    stale.unlink()
                self.writers.append(SummaryWriter(log_dir=str(member), flush_secs=10))
        except BaseException:
            self.close()
            raise

    def curve(self, m: int, point: dict) -> None:
        for name in ("loss", "grad_norm"):
            self.writers[m].add_scalar(f"train/{name}", point[name], point["iteration"])

    def evaluation(self, m: int, rows: list[dict], metric: str) -> None:
        for row in rows:
            if row["eval_steps"] in self.steps:
                split = row["split"] + ("" if row["eval_k_shot"] == self.cells[m].k_shot else f"-K{row['eval_k_shot']}")
                self.writers[m].add_scalar(f"{split}/{metric}@{row['eval_steps']}", row[metric], row["iteration"])
        self.writers[m].flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()  # flushes


@contextlib.contextmanager
def _tensorboard(cells: list[Cell], settings: Settings, folder: Path | None):
    """A `TensorBoard` closed (flushed) at the end and on failure; None when off (`folder` None)."""
    if folder is None:
        yield None
        return
    board = TensorBoard(cells, folder, settings)
    try:
        yield board
    finally:
        board.close()


def run_job(cells: list[Cell], settings: Settings, threads: int | None = None, on_iteration=None,
            tensorboard: Path | None = None) -> list[dict]:
    """Train one job and return one record per cell (never raises: failures become records).

    `on_iteration(n)` is called after every training iteration (progress display), and
    `on_iteration(n, live=k)` before each evaluation: only the k members that have not diverged
    are evaluated, so the progress scales the job's evaluation cost by them. `tensorboard`: the
    folder of the members' TensorBoard event folders (OUT/tensorboard when `tensorboard = true`);
    None: none written, and tensorboard is not imported.
    """
    if threads:
        torch.set_num_threads(threads)
    tune_malloc()  # freed memory stays in the worker: no page faults for an ensemble's tensors every step
    try:
        load_plugins(settings.plugins)  # a spawned worker or Ray task has not imported them yet
        with _tensorboard(cells, settings, tensorboard) as board:
            return _run_job(cells, settings, on_iteration, board)
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


def shared_training(cells: list[Cell], test_time_keys: tuple[str, ...]) -> tuple[list[Cell], list[int]]:
    """The cells a job trains (the first of each `config.training_key`) and, per cell, the index of
    the one whose training it shares: cells that differ only in test-time keys train once."""
    trainers: dict = {}
    member = [trainers.setdefault(training_key(cell, test_time_keys), len(trainers)) for cell in cells]
    firsts = {index: cell for cell, index in zip(reversed(cells), reversed(member))}
    return [firsts[index] for index in range(len(trainers))], member


def _run_job(cells: list[Cell], settings: Settings, on_iteration=None, board: TensorBoard | None = None) -> list[dict]:
    base = cells[0]
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    family = cell_family(base, settings)
    problem = problem_of(family)
    all_cells = cells
    cells, member_of = shared_training(all_cells, get_learner_class(base.algorithm, base.backend, base.network,
                                                                    family).test_time_keys)
    # the sine families' learners (and plug-in learners written for them) are built as always
    options = {} if problem == REGRESSION else {"problem": problem}
    options.update(learner_options(base.algorithm, settings))  # the fidelity settings away from their defaults
    hps = [c.hyperparams(settings.msl_anneal_iters or None) for c in cells]
    generators = [settings.generator(c.seed, "tasks") for c in cells]  # each purpose its own stream (`seed_streams`)
    init_generators = [settings.generator(c.seed, "weights") for c in cells]
    # decided over the sweep (`sweep.plan_compile`); a job built by hand: its cells are the group
    choice = getattr(all_cells, "compile_choice", None) or job_compile_choice(all_cells, settings)
    settings = choice.applied(settings)  # compile resolved: what the records' settings and fingerprints say
    if choice.compiled:
        options["compile"] = True
    if len(cells) > 1:
        learner = get_algorithm(base.algorithm, base.backend, hps, init_generators, device=settings.device,
                                network=sized(base.network, family), **options)
    else:
        learner = get_algorithm(base.algorithm, base.backend, hps[0], init_generators[0], device=settings.device,
                                network=sized(base.network, family), **options)
    eval_ks = sorted(set(settings.eval_k_shot) | {base.k_shot})
    eval_sets = evaluation_sets(family, settings, eval_ks, device)
    probe = evaluation_set(family, "validation", base.meta_batch, seed_offset=PROBE_SEED_OFFSET).to(device)
    eval_at = settings.evaluation_iterations(base.iterations)
    log_at = eval_at | set(range(settings.log_every, base.iterations + 1, settings.log_every))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cell_hps = [c.hyperparams(settings.msl_anneal_iters or None) for c in all_cells]
    curves = [[] for _ in cells]  # per trained member
    evaluations = [[] for _ in all_cells]  # per cell, like `final`
    final = [None] * len(all_cells)  # each cell's artifacts from its final evaluation
    diverged = [None] * len(cells)  # the reason, once a member's training loss blows up
    scaled = problem.is_mse  # MSE yardsticks: only for an MSE loss (see _divergence)
    probe_zero = float(probe.y_query.pow(2).mean()) if scaled else math.nan
    untrained = [untrained_mse(learner.adaptation(m), probe) if scaled else math.nan  # before any step
                 for m in range(len(cells))]
    zero_mse = zero_predictor_mse(eval_sets, problem)
    train_seconds, last_iteration = 0.0, 0
    for report in meta_train(learner, family, generators, base.iterations, log_at, on_iteration):
        train_seconds, last_iteration = report["train_seconds"], report["iteration"]
        losses = [float(loss) for loss in report["loss"]]
        for m, loss in enumerate(losses):
            kind = _divergence(loss, probe_zero, untrained[m], problem) if diverged[m] is None else None
            if kind is not None:
                diverged[m] = f"training loss {loss:.3g} at iteration {report['iteration']}: {kind}"
        live = [c for c in range(len(all_cells)) if diverged[member_of[c]] is None]
        if on_iteration is not None and report["iteration"] in eval_at:
            on_iteration(report["iteration"], live=len(live))  # the progress: only these are evaluated
        for m in sorted({member_of[c] for c in live}):
            curves[m].append({"iteration": report["iteration"], "loss": losses[m],
                              "grad_norm": initial_gradient_norm(learner.adaptation(m), probe, problem)})
        for c in live:
            m = member_of[c]
            if board is not None:
                board.curve(c, curves[m][-1])
            if report["iteration"] in eval_at:
                adaptation = learner.adaptation_for(m, cell_hps[c])
                rows, errors = evaluate_sets(adaptation, eval_sets, settings.eval_steps, report["iteration"], problem)
                evaluations[c].extend(rows)
                if board is not None:
                    board.evaluation(c, rows, problem.metric.name)
                if report["iteration"] == base.iterations:
                    final[c] = store.from_adaptation(adaptation)
                    final[c].errors = errors
                    final[c].n_sets = {split: len(batches) for (split, _), batches in eval_sets.items()}
                    final[c].zero_mse = zero_mse
                    final[c].untrained_mse = untrained[m]
        if all(d is not None for d in diverged):
            break
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    # compiled engines: the first call of each program (compile + one step) is recorded apart
    compile_seconds = learner.compile_seconds
    sec_per_iter = max(train_seconds - compile_seconds, 0.0) / max(1, last_iteration)
    records = []
    for c, cell in enumerate(all_cells):
        m = member_of[c]
        shared = {"shares_training_with": cells[m].cell_id} if cells[m] != cell else {}
        common = dict(metric=problem.metric.declaration(), engine=learner.engine, sec_per_iter=sec_per_iter,
                      compile_seconds=compile_seconds, compile_choice=choice.record(),
                      ensemble_size=len(cells), sec_per_iter_member=sec_per_iter / len(cells),
                      peak_memory_mb=peak / 2 ** 20, device=str(device), curve=curves[m], **shared,
                      **({"self_check": learner.self_check} if getattr(learner, "self_check", None) else {}))
        if diverged[m] is None:  # a non-finite evaluation MSE (e.g. 10 steps of a learned rate) stays visible
            qualitative = (_qualitative(learner.adaptation_for(m, cell_hps[c]), settings, cell.k_shot)
                           if problem.scalar_mse else None)
            records.append(_record(cell, settings, status="ok", error=None, evaluations=evaluations[c],
                                   qualitative=qualitative, _artifacts=final[c], **common))
        else:
            records.append(_record(cell, settings, status="diverged",
                                   error=diverged[m], evaluations=[], **common))
    return records


