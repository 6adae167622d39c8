"""The generic vectorised engine: any declared inner-update rule on any network, from torch.func.

One task's inner loop is written as plain code (the network called through `functional_call`,
the rule's `update`, weighted query losses); nothing here knows the network's layers or the
rule's maths, so a researcher's algorithm runs vectorised without writing a derivative. Two
formulations of the same meta-loss:

* eager (the default): every task's parameters are rows of [tasks, ...] tensors; one
  `autograd.grad` of the summed support losses gives every task's inner gradient (a task's loss
  depends on its own rows only), and the meta-gradient is ordinary autograd through the steps
  (second order: `create_graph`; a first-order rule detaches its inner gradients). The network
  runs all tasks at once through its `batched_forward` where it has one (the built-in MLP does),
  else per task through `vmap(functional_call)`. The rule's `update`, written for one task, is
  called once on the [tasks, ...] rows when it is elementwise (it broadcasts), else vmapped:
  a rule declares `elementwise`, or leaves it None and the engine checks, the first time each
  step runs, that the direct call equals the vmapped one bitwise, on two copies of the rule (so
  the rule itself runs once per step), and vmaps from then on where it does not. A rule's
  inner-optimiser state rides along as more [tasks, ...] rows, its context vectors as rows
  appended to the parameters (`algorithms.rules`). Nested functorch transforms (vmap of grad of
  grad) took 1.3-1.5x the time of the vmapped form, which took 1.6x this one (docs/speed.md);
* compiled (`compile=True`, the sweep key `compile`): `grad_and_value` of the vmapped
  per-task meta-loss with `torch.func.grad` inner gradients, through `torch.compile` (autograd's
  double backward does not compile into one graph), and torch's fused Adam. A one-off compile
  (~3-30 s on CPU), its first call timed into `compile_seconds`; its floats differ from eager
  ones by rounding (~1e-7). It keeps TorchDynamo (not the hand-written engine's traced program,
  `MetaLearner._compile_traced`): a plug-in's rule or network may break the graph or read Python
  state that changes, which Dynamo's guards watch and a trace would freeze.

The hand-written engine (`algorithms.func_engine`) stays the accelerator for the rules and
networks it covers; the tests hold the two number for number. One run per learner (no
ensembles): vmapping over members would change a member's floats with the ensemble's size, and
a cell's numbers must depend on its configuration alone. Speeds: docs/speed.md.
"""
from __future__ import annotations

import copy
import dataclasses
import functools

import torch
from torch.func import functional_call, grad, grad_and_value, vmap

from algorithms import selfcheck
from algorithms.base import Adaptation, HyperParams, MetaLearner
from algorithms.network import ACTIVATIONS, NetworkSpec, as_spec, make_network, with_context
from algorithms.rules import (InnerRule, adapted_mask, apply_update, check_no_python_state, context_width,
                              rule_adaptation, rule_context)
from tasks.problem import Problem, problem_of


def problem_network(generator: torch.Generator, network, problem: Problem | None = None, device="cpu",
                    dtype=torch.float32, extra_inputs: int = 0, init: str = "torch") -> torch.nn.Module:
    """`network`'s hidden layers between the problem's input and output dimensions (a task's
    `input_dim` -> `output_dim`). A 1 -> 1 problem builds exactly `make_network(network=...)` (the
    same draws: stored numbers stay bitwise); another sizes the layers from the problem, with the
    same initialisation (`init`, `network.INITS`), and puts the spec's activation in."""
    problem = problem_of(problem)
    spec = as_spec(network)
    if (problem.input_dim, problem.output_dim) == (1, 1):
        return make_network(generator, network=network, dtype=dtype, device=device, extra_inputs=extra_inputs,
                            init=init)
    if not isinstance(spec, NetworkSpec):  # a plug-in network (`PluginNetwork`): its factory sizes it
        spec = dataclasses.replace(spec, input_dim=problem.input_dim, output_dim=problem.output_dim)
        return make_network(generator, network=spec, dtype=dtype, device=device, extra_inputs=extra_inputs,
                            init=init)
    net = make_network(generator, sizes=(problem.input_dim, *spec.hidden, problem.output_dim), dtype=dtype,
                       device=device, extra_inputs=extra_inputs, init=init)
    for i, module in enumerate(net):
        if not isinstance(module, torch.nn.Linear):
            net[i] = ACTIVATIONS[spec.activation][0]()
    net.activation = spec.activation
    return net


class SGDWithRates(InnerRule):
    """Plain SGD with given per-parameter rates (floats or per-entry tensors; None: frozen): how
    the built-ins' adaptations are evaluated when their network has no fast path."""

    def __init__(self, lrs):
        self.lrs = lrs

    def update(self, params, grads, extra, step, hp):
        return [p if g is None else p - lr * g for p, g, lr in zip(params, grads, self.lrs)]


class TaskProgram:
    """One task's inner loop for a network module and a rule, as pure functions of tensors.

    A task's parameters are the network's (`adapted`: which of them adapt, from the rule's
    `adapts(names)`) followed by the rule's context vectors, which always adapt and are fed to
    the network with the inputs (`with_context`). A task's loss is its family's (`problem`,
    `tasks.problem`): MSE by default, through the code it always ran (bitwise), shapes checked."""

    def __init__(self, net: torch.nn.Module, rule: InnerRule, hp: HyperParams | None, adapted: list[bool],
                 problem: Problem | None = None):
        self.net, self.rule, self.hp = net, rule, hp
        self.problem = problem_of(problem)  # its loss is the task loss (MSE: the code below, unchanged)
        self.names = [name for name, _ in net.named_parameters()]
        self.n_contexts = len(rule_context(rule, hp, torch.empty(0)))
        self.adapted = list(adapted) + [True] * self.n_contexts
        if not any(self.adapted):
            raise ValueError(f"{rule!r} adapts no parameter and has no context: nothing to adapt")

    def contexts(self, like: torch.Tensor) -> list[torch.Tensor]:
        """The contexts' reset values (one task's) in `like`'s dtype and device."""
        return rule_context(self.rule, self.hp, like) if self.n_contexts else []

    def start(self, params, extra, tasks: int | None = None):
        """A task's parameters (network's + contexts) and the rule's fresh state, from the shared
        network parameters; with `tasks`, as rows [tasks, ...] (every task starts alike). Context
        rows are leaves of their own (inner gradients are taken with respect to them)."""
        contexts = self.contexts(params[0])
        state = list(self.rule.init_state([*params, *contexts], list(extra), self.hp))
        if tasks is None:
            return [*params, *contexts], state
        rows = [p.unsqueeze(0).expand(tasks, *p.shape) for p in params]
        rows += [c.unsqueeze(0).expand(tasks, *c.shape).clone().requires_grad_() for c in contexts]
        return rows, [t.unsqueeze(0).expand(tasks, *t.shape) for t in state]

    def loss(self, params, x, y) -> torch.Tensor:
        """The problem's loss of one task's points (MSE by default): x [points, in], y [points, 1]."""
        x = with_context(x, params[len(self.names):])
        out = functional_call(self.net, dict(zip(self.names, params)), (x,))
        if not self.problem.is_mse:
            return self.problem.task_losses(out, y)
        self.problem.check_shapes(out, y)
        return (out - y).pow(2).mean()

    def batched_losses(self, params, x, y) -> torch.Tensor:
        """Every task's loss [tasks] for parameters [tasks, ...] and x, y [tasks, points, ...]."""
        batched = getattr(self.net, "batched_forward", None)
        if batched is None:
            return vmap(self.loss)(params, x, y)
        n = len(self.names)
        out = batched(params[:n], with_context(x, params[n:]))
        if not self.problem.is_mse:
            return self.problem.task_losses(out, y)
        self.problem.check_shapes(out, y)
        return (out - y).pow(2).mean(dim=(-2, -1))

    def gradients(self, params, x, y) -> list[torch.Tensor | None]:
        """The support loss's gradient for the adapted parameters (None for the others)."""
        index = [i for i, a in enumerate(self.adapted) if a]

        def of_adapted(adapted):
            full = list(params)
            for i, p in zip(index, adapted):
                full[i] = p
            return self.loss(full, x, y)

        found = grad(of_adapted)([params[i] for i in index])
        if self.rule.first_order:
            found = [g.detach() for g in found]
        grads: list = [None] * len(params)
        for i, g in zip(index, found):
            grads[i] = g
        return grads

    def step(self, params, state, extra, x, y, step: int):
        """One inner step of one task: (params, state)."""
        return apply_update(self.rule, list(params), self.gradients(params, x, y), list(extra), step, self.hp,
                            list(state))

    def meta_loss(self, params, extra, xs, ys, xq, yq, weights, used=None) -> torch.Tensor:
        """Σ_s w_s · query loss after s inner steps, for one task (`params`: the network's shared
        parameters). `used[s]` says whether step s's weight is non-zero (given apart when the
        weights are a tensor, for a compiled program)."""
        total = None
        params, state = self.start(list(params), extra)
        for s in range(len(weights)):
            if s > 0:
                params, state = self.step(params, state, extra, xs, ys, s - 1)
            if used[s] if used is not None else weights[s]:
                term = self.loss(params, xq, yq) * weights[s]
                total = term if total is None else total + term
        return total


class GenericLearner(MetaLearner):
    """Any `InnerRule` on any network: vmap over tasks, grad through the inner loop."""

    stacked_batches = False
    n_members = 1
    engine = "generic"
    thread_invariant = True  # tested: tests/test_sweep.py
    rule: InnerRule = InnerRule()  # bound per algorithm by the registry

    compiles = True  # `compile=True`: the meta-gradient through torch.compile
    self_check: str | None = None  # what the first-use self-check found (`algorithms.selfcheck`); None: not run

    def __init__(self, hp: HyperParams, generator: torch.Generator, device: str = "cpu",
                 network=None, rule: InnerRule | None = None, compile: bool = False, problem: Problem | None = None,
                 init: str = "torch"):
        if isinstance(hp, (list, tuple)) or isinstance(generator, (list, tuple)):
            raise ValueError("the generic engine trains one run per learner (no ensembles)")
        super().__init__(hp, generator, device)
        self.rule = rule or self.rule
        self.network = as_spec(network)
        self.problem = problem_of(problem)  # the task's loss and network dimensions (`tasks.problem`)
        self.net = problem_network(generator, self.network, self.problem, device=device,
                                   extra_inputs=context_width(self.rule, hp), init=init)
        params = list(self.net.parameters())
        names = [name for name, _ in self.net.named_parameters()]
        self.program = TaskProgram(self.net, self.rule, hp, adapted_mask(self.rule, names), self.problem)
        start = [p.detach() for p in params] + self.program.contexts(params[0])
        self.extra = [e.detach().clone().requires_grad_() for e in self.rule.extra(start, hp)]
        self.meta_parameters = params + self.extra
        self.compile = compile
        if compile:
            self.engine = "generic+compile"
        self._direct_steps: dict[int, bool] = {}  # step -> whether the rule's update runs unbatched (checked)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Compiled runs take torch's fused Adam (one kernel for every tensor): the default
        per-tensor loop was a third of a compiled FOMAML step at S = 1 (0.098 of 0.293 ms, one
        thread; fused 0.034 ms). Its floats differ from the loop's by rounding, so eager runs keep
        the loop (their committed numbers stay bitwise)."""
        if not self.compile:
            return super().make_optimizer()
        return torch.optim.Adam(self.meta_parameters, lr=self.hp.lr_meta, fused=True)

    def double(self) -> "GenericLearner":
        self.net.double()
        self.extra = [e.detach().double().requires_grad_() for e in self.extra]
        self.meta_parameters = list(self.net.parameters()) + self.extra
        return self

    def _batched_meta_loss(self, meta, xs, ys, xq, yq, weights, used=None):
        n = len(self.program.names)
        per_task = vmap(self.program.meta_loss, in_dims=(None, None, 0, 0, 0, 0, None, None))
        return per_task(meta[:n], meta[n:], xs, ys, xq, yq, weights, used).mean()

    def _batched_meta_loss_autograd(self, weights, xs, ys, xq, yq) -> torch.Tensor:
        """The same meta-loss for eager autograd: only the network call is vmapped; every
        task's parameters are rows of [tasks, ...] tensors, so one `autograd.grad` of the summed
        support losses gives every task's inner gradient (each task's loss depends on its own
        rows only) and the graph through the steps is ordinary autograd."""
        program, n = self.program, len(self.program.names)
        tasks = xs.shape[0]
        extra = self.meta_parameters[n:]
        params, state = program.start(self.meta_parameters[:n], extra, tasks)
        losses = program.batched_losses
        index = [i for i, a in enumerate(program.adapted) if a]
        second_order = not self.rule.first_order
        total = None
        for s in range(len(weights)):
            if s > 0:
                found = torch.autograd.grad(losses(params, xs, ys).sum(), [params[i] for i in index],
                                            create_graph=second_order, retain_graph=True)
                grads: list = [None] * len(params)
                for i, g in zip(index, found):
                    grads[i] = g if second_order else g.detach()
                params, state = self._update(params, grads, list(extra), s - 1, state)
            if weights[s]:
                term = losses(params, xq, yq).mean() * weights[s]
                total = term if total is None else total + term
        return total

    def _update(self, params, grads, extra, step: int, state):
        """The rule's update of every task's rows [tasks, ...] (and state): one direct call where the
        rule is elementwise (declared, or checked bitwise against the vmapped update the first time
        `step` runs, `_elementwise_at`), else vmapped over tasks (the rule is written for one
        task). The rule itself runs exactly once per step."""
        direct = self._direct_steps.get(step, self.rule.elementwise)
        if direct is None:
            direct = self._direct_steps[step] = self._elementwise_at(params, grads, extra, step, state)
        before = dict(vars(self.rule))
        if direct:
            found = apply_update(self.rule, params, grads, extra, step, self.hp, state)
        else:
            found = self._vmapped(self.rule, params, grads, extra, step, state)
        check_no_python_state(self.rule, before)
        return found

    def _vmapped(self, rule, params, grads, extra, step, state):
        in_dims = ([0] * len(params), [None if g is None else 0 for g in grads], None, None, None, [0] * len(state))
        mapped = vmap(functools.partial(apply_update, rule), in_dims=in_dims)
        return mapped(params, grads, extra, step, self.hp, state)

    def _elementwise_at(self, params, grads, extra, step: int, state) -> bool:
        """Whether the rule's direct call on every task's rows equals the vmapped call, bitwise.

        Checked on two copies of the rule and without a graph, so that the rule itself is called
        once per step whatever it does (calling it twice advanced state kept on the rule object:
        issue 21, 161% off). A rule that cannot be copied must declare `elementwise`."""
        try:
            direct_rule, mapped_rule = copy.deepcopy(self.rule), copy.deepcopy(self.rule)
        except Exception as error:  # noqa: BLE001 - whatever deepcopy raises, the answer is the same
            raise ValueError(f"{self.rule!r}: the generic engine checks on copies of the rule whether its update is "
                             f"elementwise, but the rule cannot be copied ({error}); declare elementwise = True "
                             "or False") from None
        with torch.no_grad():
            per_task = self._vmapped(mapped_rule, params, grads, extra, step, state)
            try:
                out = apply_update(direct_rule, params, grads, extra, step, self.hp, state)
            except (RuntimeError, ValueError, IndexError, TypeError):  # written for one task's shapes only
                return False
        pairs = list(zip(out[0] + out[1], per_task[0] + per_task[1]))
        return all(a.shape == b.shape and torch.equal(a, b) for a, b in pairs)

    def meta_gradient(self, batch, iteration: int = 0):
        if isinstance(self.network, NetworkSpec):  # sized from the problem (a plug-in network sizes itself)
            self.problem.check_inputs(batch.x_support)
        if not self.__dict__.get("_self_checked"):  # a plug-in's network, rule or loss: held to the loop once
            selfcheck.run(self, batch, iteration)
            self._self_checked = True
        weights = tuple(self.rule.loss_weights(self.hp, iteration))
        data = (batch.x_support, batch.y_support, batch.x_query, batch.y_query)
        if not self.compile:
            with torch.enable_grad():
                loss = self._batched_meta_loss_autograd(weights, *data)
                grads = torch.autograd.grad(loss, self.meta_parameters, allow_unused=True, materialize_grads=True)
            return loss.detach(), list(grads)
        meta = [p.detach() for p in self.meta_parameters]
        # Compiled: the weights' values enter as a tensor (MSL anneals them every iteration, which
        # would recompile); only the pattern of non-zero weights selects the program.
        used = tuple(bool(w) for w in weights)
        values = torch.tensor(weights, dtype=meta[0].dtype, device=meta[0].device)

        def build():
            return self._compile(grad_and_value(functools.partial(self._batched_meta_loss, used=used)),
                                 fullgraph=False)  # a plug-in's rule or network may break the graph

        grads, loss = self._compiled_call(used, build, meta, *data, values)
        return loss.detach(), list(grads)

    def adaptation(self, member: int = 0) -> Adaptation:
        return rule_adaptation(self.rule, self.net, self.extra, self.hp, self.network)


#: which points of a training task pre-training fits (the sweep setting `pretrain_points`):
#: "support+query", every point a task has (this suite's baseline); "support", its K support points
#: only, as Finn et al.'s released code (`cbfinn/maml`: `pretrain_op` minimises `total_loss1`, the
#: loss on `inputa`, the K support points, at the initial weights)
PRETRAIN_POINTS = ("support+query", "support")


class PretrainPoints:
    """The `pretrain_points` option of every pre-training learner (`PRETRAIN_POINTS`), mixed in:
    `fitted_points` is the one place that says which points a step fits, so the backends cannot
    differ in it. Each learner's constructor names the option explicitly (`pretrain_points=`),
    beside its base's own parameters: the sweep's parse-time check reads constructors' signatures."""

    pretrain_points: str = PRETRAIN_POINTS[0]
    #: pre-training fits the points with Adam at LR_meta; LR_base is only its test-time fine-tuning
    #: rate (`MetaLearner.test_time_keys`), so its rates share one training
    test_time_keys = ("lr_base",)

    def _use_points(self, pretrain_points: str) -> None:
        if pretrain_points not in PRETRAIN_POINTS:
            raise ValueError(f"unknown pretrain_points {pretrain_points!r}; "
                             f"valid choices: {', '.join(PRETRAIN_POINTS)}")
        self.pretrain_points = pretrain_points

    def fitted_points(self, batch, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) a pre-training step fits: support and query points joined along the points
        dimension `dim` (as always), or the support points alone."""
        if self.pretrain_points == "support":
            return batch.x_support, batch.y_support
        return (torch.cat([batch.x_support, batch.x_query], dim=dim),
                torch.cat([batch.y_support, batch.y_query], dim=dim))


class GenericPretrain(PretrainPoints, GenericLearner):
    """Joint pre-training with the task's loss (`tasks.problem`) on any network: every task's
    support and query points (or support points only: `pretrain_points`) through the shared
    network at once, loss the mean of the tasks'.

    What the `func` backend runs for a problem its accelerated pre-training does not cover
    (anything but 1 -> 1 MSE): `engine` "generic". Only a forward and a first-order backward, no
    torch.func transform beyond the network's `vmap` (the eager path): no self-check, no compile."""

    compiles = False

    def __init__(self, hp: HyperParams, generator: torch.Generator, device: str = "cpu", network=None,
                 rule: InnerRule | None = None, compile: bool = False, problem: Problem | None = None,
                 init: str = "torch", pretrain_points: str = PRETRAIN_POINTS[0]):
        self._use_points(pretrain_points)
        super().__init__(hp, generator, device, network, rule, compile, problem, init)

    def meta_gradient(self, batch, iteration: int = 0):
        if isinstance(self.network, NetworkSpec):
            self.problem.check_inputs(batch.x_support)
        x, y = self.fitted_points(batch)
        with torch.enable_grad():
            rows, _ = self.program.start(self.meta_parameters, [], x.shape[0])  # shared: expanded, not copied
            loss = self.program.batched_losses(rows, x, y).mean()
            grads = torch.autograd.grad(loss, self.meta_parameters)
        return loss.detach(), list(grads)


class GenericReptile(GenericLearner):
    """Reptile (Nichol et al. 2018) with the task's loss on any network, every task at once: S SGD
    steps at LR_base on each task's rows [tasks, ...] (one `autograd.grad` of the summed support
    losses, first order), outer pseudo-gradient θ − mean_t(φ_t), reported loss the mean query
    loss after adaptation: `loop_backends.TorchReptile`'s maths (held to it in float64).

    What `func` runs for a problem its accelerated Reptile does not cover: `engine` "generic".
    First order, eager: no self-check, no compile."""

    compiles = False

    def meta_gradient(self, batch, iteration: int = 0):
        if isinstance(self.network, NetworkSpec):
            self.problem.check_inputs(batch.x_support)
        xs, ys, xq, yq = batch.x_support, batch.y_support, batch.x_query, batch.y_query
        theta = [p.detach() for p in self.meta_parameters]
        phi, _ = self.program.start(theta, [], xs.shape[0])
        losses = self.program.batched_losses
        for _ in range(self.hp.inner_steps):
            phi = [p.detach().requires_grad_() for p in phi]
            with torch.enable_grad():
                grads = torch.autograd.grad(losses(phi, xs, ys).sum(), phi)
            phi = [p.detach() - self.hp.lr_base * g for p, g in zip(phi, grads)]
        with torch.no_grad():
            loss = losses(phi, xq, yq).mean()
            pseudo = [(t - f).mean(0) for t, f in zip(theta, phi)]  # as the loop's Σ_t (θ − φ_t)/T: 0 at S = 0
        return loss, pseudo


# -- evaluation of any adaptation on any network ------------------------------------------------

@functools.lru_cache(maxsize=16)
def _module(network, dtype, device, extra_inputs: int = 0, problem: Problem | None = None) -> torch.nn.Module:
    """A network module to call through `functional_call` (its own weights are never used)."""
    return problem_network(torch.Generator().manual_seed(0), network, problem, dtype=dtype, device=device,
                           extra_inputs=extra_inputs)


def _program_for(adaptation: Adaptation, problem: Problem | None = None) -> TaskProgram:
    """The adaptation's task program: its rule's own declaration (adapted names, state, context)
    where it has one, else SGD with its rates; the task loss is `problem`'s (default MSE)."""
    like = adaptation.params[0]
    problem = problem_of(problem)
    if adaptation.rule is None:
        net = _module(adaptation.network, like.dtype, like.device, 0, problem)
        return TaskProgram(net, SGDWithRates(adaptation.lrs), adaptation.hp, [lr is not None for lr in adaptation.lrs],
                           problem)
    rule = adaptation.rule
    net = _module(adaptation.network, like.dtype, like.device, context_width(rule, adaptation.hp), problem)
    return TaskProgram(net, rule, adaptation.hp, adapted_mask(rule, [name for name, _ in net.named_parameters()]),
                       problem)


def adapt_tasks(adaptation: Adaptation, x, y, steps: int, program: TaskProgram | None = None):
    """Yield each task's parameters [tasks, ...] after 0..`steps` inner steps on (x, y) [tasks, N, 1]:
    the network's, then the rule's context vectors (if any)."""
    program = program or _program_for(adaptation)
    extra = [e.detach() for e in adaptation.extra]
    params, state = program.start([p.detach() for p in adaptation.params], extra, x.shape[0])
    params = [p.detach() for p in params]
    yield params
    for s in range(steps):
        params, state = vmap(program.step, in_dims=(0, 0, None, 0, 0, None))(params, state, extra, x, y, s)
        yield params


def curve(adaptation: Adaptation, batch, steps: int, problem: Problem | None = None) -> torch.Tensor:
    """Query loss per step and task [steps + 1, tasks] (MSE unless `problem` says otherwise),
    through the generic engine."""
    program = _program_for(adaptation, problem)
    losses = vmap(program.loss)
    with torch.no_grad():
        return torch.stack([losses(params, batch.x_query, batch.y_query)
                            for params in adapt_tasks(adaptation, batch.x_support, batch.y_support, steps, program)])


def curves(adaptation: Adaptation, batch, steps: int, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Query loss and the problem's metric per step and task, each [steps + 1, tasks]."""
    program = _program_for(adaptation, problem)
    n = len(program.names)

    def both(params, x, y):
        out = functional_call(program.net, dict(zip(program.names, params[:n])), (with_context(x, params[n:]),))
        return program.loss(params, x, y), problem.metric.task_values(out, y)

    rows = []
    with torch.no_grad():
        for params in adapt_tasks(adaptation, batch.x_support, batch.y_support, steps, program):
            rows.append(vmap(both)(params, batch.x_query, batch.y_query))
    return torch.stack([loss for loss, _ in rows]), torch.stack([metric for _, metric in rows])


def first_gradient_norms(adaptation: Adaptation, x, y, problem: Problem | None = None) -> torch.Tensor:
    """Frobenius norm of each task's first support gradient over the adapted parameters (contexts
    included) [tasks]."""
    program = _program_for(adaptation, problem)
    params, _ = program.start([p.detach() for p in adaptation.params], [e.detach() for e in adaptation.extra])
    with torch.no_grad():
        grads = vmap(lambda p, xt, yt: [g for g in program.gradients(p, xt, yt) if g is not None],
                     in_dims=(None, 0, 0))(params, x, y)
        return torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))
