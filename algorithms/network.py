"""The base learner: an MLP described by a `NetworkSpec` (Finn et al.'s is 1 -> 40 -> 40 -> 1,
ReLU), as a module and as pure functions.

The network is configuration (a cell's `network` key, e.g. "relu-40-40" or "tanh-64-64", or
the name of a plug-in network): every backend builds it from the spec. The hand-written fast
path below covers ReLU MLPs (`accelerated`); other networks run on the generic `torch.func` engine.

A plug-in network is any `nn.Module`, registered by name (`algorithms.register_network(name,
factory)`, `factory(input_dim, output_dim) -> nn.Module`) into `NETWORKS`; `as_spec(name)` gives its
`PluginNetwork`. Decisions: its weights are the factory's own initialisation, drawn under a forked
global RNG seeded from the run's generator (so a run's weights depend on its seed alone, like the
MLP's); a registered name may not spell a built-in MLP ("relu-40-40"); backends that build only the
suite's MLP (`func`'s fast path, `jax`) do not cover it (`covers_network`).

The module feeds learn2learn and higher; the pure functions feed the vectorised engine and
the shared evaluation. All use torch's layout (weight [out, in], bias [out]), so a module's
parameters are the functions' parameters with no conversion.

* `forward` / `task_losses`: any leading batch dimensions on the parameters (per task, per
  ensemble member), matching x's [..., N, in]. The plain reference. `query_losses`: its numbers
  bitwise, without a graph and in place (the evaluation's wide query pass).
* The fast path works on flat batches, x [B, N, in], with parameters [G, ...] where G
  divides B: G == B is one parameter set per task, G < B means each set is shared by B/G
  consecutive tasks (an ensemble member's initialisation), and those tasks are folded into
  the rows of one GEMM instead of expanding the weights.
  - `mlp_forward`: output and the layer inputs (the tape for the backward passes);
  - `mlp_gradients`: each task's MSE gradient, the MLP's backward pass written out by hand
    (exactly what autograd computes), from ordinary differentiable ops;
  - `mlp_backward` and `mlp_gradients_backward`: their vector-Jacobian products, also by
    hand, so that a second-order meta-gradient needs no autograd graph at all (autograd's
    double backward costs ~3x the ops, and at these sizes ops, not flops, are the time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, ClassVar

import torch
from torch import nn

LAYER_SIZES = (1, 40, 40, 1)
#: activation name -> (module, function); the fast path covers "relu"
ACTIVATIONS = {"relu": (nn.ReLU, torch.relu), "tanh": (nn.Tanh, torch.tanh)}
#: the same activations applied in place (`forward_no_grad`)
IN_PLACE_ACTIVATIONS = {"relu": torch.Tensor.relu_, "tanh": torch.Tensor.tanh_}
MAX_WIDTH = 4096  # a hidden layer wider than this is a typo (and would not fit an ensemble in memory)
#: how the suite's MLPs draw their initial weights (the sweep setting `init`, `make_network`):
#: "torch", `nn.Linear`'s default; "finn", Finn et al.'s released code (`cbfinn/maml`, maml.py,
#: `MAML.construct_fc_weights`): weights `tf.truncated_normal(stddev=0.01)`, biases `tf.zeros`
INITS = ("torch", "finn")
FINN_WEIGHT_SD = 0.01  # tf.truncated_normal's stddev there; it redraws beyond 2 sd, so |w| <= 0.02


@dataclass(frozen=True)
class NetworkSpec:
    """An MLP from one input to one output: hidden widths and the hidden activation.

    Spelled in configuration as "<activation>-<width>-<width>...", e.g. "relu-40-40" (Finn's
    network, the default) or "tanh-64-64"; "relu" alone is a linear model with no hidden layer.
    """

    hidden: tuple[int, ...] = (40, 40)
    activation: str = "relu"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid choices: {', '.join(ACTIVATIONS)}")
        for width in self.hidden:
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
                raise ValueError(f"hidden widths must be integers in [1, {MAX_WIDTH}], got {width!r}")

    @classmethod
    def parse(cls, text: str) -> "NetworkSpec":
        """"tanh-64-64" -> NetworkSpec((64, 64), "tanh"); ValueError naming the text otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"network must be a string like 'relu-40-40', got {text!r}")
        activation, *widths = text.strip().lower().split("-")
        if not all(w.isdigit() for w in widths):
            raise ValueError(f"network {text!r}: expected '<activation>-<width>-<width>...', e.g. 'relu-40-40' "
                             f"or 'tanh-64-64' (activations: {', '.join(ACTIVATIONS)})")
        try:
            return cls(tuple(int(w) for w in widths), activation)
        except ValueError as error:
            raise ValueError(f"network {text!r}: {error}") from None

    @property
    def name(self) -> str:
        return "-".join([self.activation, *map(str, self.hidden)])

    @property
    def sizes(self) -> tuple[int, ...]:
        return (1, *self.hidden, 1)

    @property
    def accelerated(self) -> bool:
        """Whether the hand-written reverse pass (ReLU only) covers this network."""
        return self.activation == "relu"

    def apply(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The network on x [..., N, in] with parameters carrying matching leading dims (`forward`)."""
        return forward(params, x, self.activation)


DEFAULT_NETWORK = NetworkSpec()

#: plug-in networks: name -> factory(input_dim, output_dim) -> nn.Module (`algorithms.register_network`)
NETWORKS: dict[str, Callable[[int, int], nn.Module]] = {}


@dataclass(frozen=True)
class PluginNetwork:
    """A registered `nn.Module` network, sized input_dim -> output_dim (the task family's; 1 -> 1
    where the family declares none). The factory is part of its identity, so caches keyed by the
    network (`parameter_names`) never serve a replaced registration."""

    name: str
    factory: Callable[[int, int], nn.Module]
    input_dim: int = 1
    output_dim: int = 1
    accelerated: ClassVar[bool] = False  # no hand-written reverse pass: the generic engine runs it
    activation: ClassVar[None] = None  # not one of the suite's MLPs

    def build(self, generator: torch.Generator, extra_inputs: int = 0) -> nn.Module:
        """The factory's module, its initialisation drawn from a seed taken from `generator`."""
        seed = int(torch.randint(2 ** 62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.factory(self.input_dim + extra_inputs, self.output_dim)
        if not isinstance(module, nn.Module) or not any(True for _ in module.parameters()):
            raise TypeError(f"network {self.name!r}: the factory must return a torch.nn.Module with parameters, "
                            f"got {type(module).__name__}")
        return module

    def apply(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The module on x [tasks, N, in] with parameters [tasks, ...] (`named_parameters` order)."""
        net = _plugin_module(self)
        names = [name for name, _ in net.named_parameters()]
        call = lambda p, xt: torch.func.functional_call(net, dict(zip(names, p)), (xt,))  # noqa: E731
        return torch.vmap(call)(params, x)


@lru_cache(maxsize=16)
def _plugin_module(network: PluginNetwork) -> nn.Module:
    return network.build(torch.Generator().manual_seed(0))


@lru_cache(maxsize=64)
def running_buffers(network: "NetworkSpec | PluginNetwork") -> tuple[str, ...]:
    """The buffers a network's (training-mode) forward changes in place, e.g. BatchNorm's running
    statistics; () for the suite's MLPs.

    Why: every engine adapts a task functionally (new parameters per task, `functional_call`),
    which cannot thread such state: the loops would update one shared copy from every task in
    turn (silently), `vmap` fails on the in-place update. So every backend refuses such a network
    (`algorithms.get_learner_class`). Found by running one forward of a fresh copy on 4 random
    points, so that any module with running state is caught, not only torch's norm layers; a
    forward that fails here is left to fail in the run with its own error."""
    if not isinstance(network, PluginNetwork):
        return ()
    net = network.build(torch.Generator().manual_seed(0)).train()
    before = {name: b.clone() for name, b in net.named_buffers()}
    if not before:
        return ()
    x = torch.randn(4, network.input_dim, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            net(x.to(next(net.parameters()).dtype))
    except Exception:  # noqa: BLE001 - whatever the forward raises, the run will raise it again
        return ()
    return tuple(name for name, b in net.named_buffers() if name in before and not torch.equal(before[name], b))


class _BuiltinNetworks:
    """`name in BUILTIN_NETWORKS`: whether `name` spells one of the suite's MLPs (not a plug-in)."""

    def __contains__(self, name) -> bool:
        try:
            NetworkSpec.parse(name)
        except ValueError:
            return False
        return True


BUILTIN_NETWORKS = _BuiltinNetworks()


def as_spec(network: "NetworkSpec | PluginNetwork | str | None") -> "NetworkSpec | PluginNetwork":
    """The network a configuration names: a built-in MLP spec or a registered plug-in (1 -> 1)."""
    if network is None:
        return DEFAULT_NETWORK
    if isinstance(network, (NetworkSpec, PluginNetwork)):
        return network
    if isinstance(network, str) and network in NETWORKS:
        return PluginNetwork(network, NETWORKS[network])
    try:
        return NetworkSpec.parse(network)
    except ValueError as error:
        if NETWORKS:
            raise ValueError(f"{error}; registered networks: {', '.join(sorted(NETWORKS))}") from None
        raise


def sized(network, family) -> "NetworkSpec | PluginNetwork":
    """`network` sized for a task `family`: a plug-in takes the family's `input_dim` / `output_dim`
    (1 where it declares none); the built-in MLP specs are 1 -> 1 as before."""
    spec = as_spec(network)
    if isinstance(spec, PluginNetwork):
        return replace(spec, input_dim=getattr(family, "input_dim", 1), output_dim=getattr(family, "output_dim", 1))
    return spec


class MLP(nn.Sequential):
    """The MLP as a module (Linear, activation, ..., Linear) that also runs every task at once.

    `batched_forward` is the optional network protocol of the generic engine
    (`algorithms.generic_engine`): parameters with a leading tasks dimension [T, ...] (in
    `named_parameters` order) and x [T, N, in] -> [T, N, out], in plain batched products; a network
    without it is run per task through `vmap(functional_call)`, which gives the same numbers with
    more dispatch (the engine's meta-gradient took 1.6x the time; docs/speed.md).
    """

    def __init__(self, *layers: nn.Module, activation: str = "relu"):
        super().__init__(*layers)
        self.activation = activation

    def batched_forward(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return forward(params, x, self.activation)


def make_network(generator: torch.Generator, sizes=LAYER_SIZES, dtype=torch.float32, device="cpu",
                 network: "NetworkSpec | str | None" = None, extra_inputs: int = 0, init: str = "torch") -> MLP:
    """The network with `init`'s initialisation (`INITS`; default torch's Linear init), drawn from
    `generator` (not the global RNG).

    `network` (a spec or its name) overrides `sizes` and sets the activation (default ReLU).
    `extra_inputs` widens the first layer for a rule's context vectors (CAVIA; `algorithms.rules`).
    `init = "finn"`: each layer's weight ([out, in], row-major) from a normal of sd `FINN_WEIGHT_SD`
    truncated at 2 sd (`nn.init.trunc_normal_`: the distribution of `tf.truncated_normal`, by the
    inverse CDF rather than TensorFlow's redraws), layer by layer; biases zero. A plug-in network
    initialises itself (its factory), so it refuses "finn" (ValueError) rather than ignore it.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid choices: {', '.join(INITS)}")
    name = "relu"
    if network is not None:
        spec = as_spec(network)
        if isinstance(spec, PluginNetwork):
            if init != "torch":
                raise ValueError(f"init = {init!r} draws the suite's MLPs' weights; plug-in network {spec.name!r} "
                                 "has its own initialisation (its factory's): use init = \"torch\"")
            return spec.build(generator, extra_inputs).to(dtype=dtype, device=device)
        sizes, name = spec.sizes, spec.activation
    if extra_inputs:
        sizes = (sizes[0] + extra_inputs, *sizes[1:])
    activation = ACTIVATIONS[name][0]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out, dtype=dtype)
        with torch.no_grad():
            if init == "finn":
                nn.init.trunc_normal_(linear.weight, std=FINN_WEIGHT_SD, a=-2 * FINN_WEIGHT_SD,
                                      b=2 * FINN_WEIGHT_SD, generator=generator)
                nn.init.zeros_(linear.bias)
            else:
                # Same distribution as nn.Linear.reset_parameters, with an explicit generator.
                nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(activation())
    return MLP(*layers, activation=name).to(device)


def with_context(x: torch.Tensor, contexts: list[torch.Tensor]) -> torch.Tensor:
    """x [..., N, in] with each context vector [..., k] appended to every point: [..., N, in + Σk]
    (CAVIA's input concatenation; `algorithms.rules.InnerRule.context`)."""
    if not contexts:
        return x
    return torch.cat([x, *(c.unsqueeze(-2).expand(*x.shape[:-1], c.shape[-1]) for c in contexts)], dim=-1)


@lru_cache(maxsize=64)
def parameter_names(network: "NetworkSpec | str | None" = None) -> tuple[str, ...]:
    """The network's `named_parameters()` names (what a rule's `adapts(names)` is asked about)."""
    return tuple(name for name, _ in make_network(torch.Generator(), network=network).named_parameters())


def forward(params: list[torch.Tensor], x: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """MLP forward: params = [w1, b1, w2, b2, ...] with batch dims matching x's [..., N, in]."""
    act = ACTIVATIONS[activation][1]
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        weight, bias = params[2 * i], params[2 * i + 1]
        h = torch.matmul(h, weight.transpose(-1, -2)) + bias.unsqueeze(-2)
        if i < n_layers - 1:
            h = act(h)
    return h


def task_losses(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """Mean squared error per task: x, y [..., tasks, points, 1] -> [..., tasks]."""
    return (forward(params, x, activation) - y).pow(2).mean(dim=(-2, -1))


def _in_place(out: torch.Tensor, other: torch.Tensor, subtract: bool = False) -> torch.Tensor:
    """out ± other, into out where the result has out's shape (a broadcast to a larger shape cannot be)."""
    if torch.broadcast_shapes(out.shape, other.shape) != out.shape:
        return out - other if subtract else out + other
    return out.sub_(other) if subtract else out.add_(other)


def query_losses(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """`task_losses` without a graph, bitwise: the same products and elementwise operations in the
    same order, but each layer's bias and activation and the error applied in place. Evaluation's
    query pass (600 tasks x 100 points x 40 units per layer and step) spent half its time allocating
    and faulting in fresh buffers for them (docs/speed.md)."""
    act = IN_PLACE_ACTIVATIONS[activation]
    n_layers = len(params) // 2
    with torch.no_grad():
        h = x
        for i in range(n_layers):
            weight, bias = params[2 * i], params[2 * i + 1]
            # one input feature: each output is one product, which a broadcast computes as the
            # GEMM does (k = 1, no sum to round) at a quarter of its cost
            product = h * weight.transpose(-1, -2) if weight.shape[-1] == 1 else torch.matmul(h, weight.transpose(-1, -2))
            h = _in_place(product, bias.unsqueeze(-2))
            if i < n_layers - 1:
                h = act(h)
        return _in_place(h, y, subtract=True).pow_(2).mean(dim=(-2, -1))


# -- the fast path: flat batches [B, N, features], parameters [G, ...] with G | B ---------------

def _fold(h: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, N, f] -> [G, (B/G)·N, f]: tasks sharing a parameter set become rows of one product."""
    return h if h.shape[0] == groups else h.reshape(groups, -1, h.shape[-1])


def _unfold(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return out if out.shape[0] == like.shape[0] else out.view(*like.shape[:2], -1)


def _matmul(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """[G, R, k] @ [G, k, n] (+ `add`), with each group's arithmetic independent of G.

    torch's CPU bmm/baddbmm take another kernel for a batch of one when n == 1 (a
    matrix-vector product), whose rounding differs from the batched one's. An ensemble
    member must compute exactly what the same run alone computes (a cell's numbers depend on
    its configuration alone), so 1-wide products are written as broadcasts: k == 1 is an
    outer product, n == 1 a row-wise dot product (a reduction over the contiguous last dim).
    """
    if b.shape[1] == 1:
        return a * b if add is None else torch.addcmul(add, a, b)
    if b.shape[2] == 1:
        out = (a * b.transpose(1, 2)).sum(-1, keepdim=True)
        return out if add is None else out + add
    return torch.bmm(a, b) if add is None else torch.baddbmm(add, a, b)


def linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """h [B, N, in] -> h·Wᵀ + b [B, N, out] with weight [G, out, in], bias [G, out], G | B (one product per layer)."""
    out = _matmul(_fold(h, weight.shape[0]), weight.transpose(1, 2), None if bias is None else bias.unsqueeze(1))
    return _unfold(out, h)


def _times_weight(delta: torch.Tensor, weight: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    """delta [B, N, out] -> delta·W [B, N, in] (+ `into`): the backward of `linear` with respect to h."""
    groups = weight.shape[0]
    out = _matmul(_fold(delta, groups), weight, None if into is None else _fold(into, groups))
    return _unfold(out, delta)


@lru_cache(maxsize=256)
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, device=device)


def scaled(t: torch.Tensor, value: float) -> torch.Tensor:
    """t·value; a cached 0-dim tensor skips the Python-scalar conversion torch does on every call.

    A traced tensor (a fake one, `MetaLearner._compile_traced`) gets a fresh 0-dim tensor: the
    cache must not keep a tensor that belongs to a trace.
    """
    if type(t) is not torch.Tensor and not torch.compiler.is_compiling():
        return torch.mul(t, torch.full((), value, dtype=t.dtype, device=t.device))
    return torch.mul(t, _constant(value, t.dtype, t.device))


def _outer(a: torch.Tensor, b: torch.Tensor, groups: int, into: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over each group's rows of aᵀb: [B, N, p], [B, N, q] -> [G, p, q] (added to `into`).

    A 1-wide side (x, or the output's delta) is a broadcast and a sum over rows, not a bmm:
    faster, and independent of G (see `_matmul`).
    """
    fa, fb = _fold(a, groups), _fold(b, groups)
    if fb.shape[-1] == 1:
        out = (fa * fb).sum(1).unsqueeze(-1)
    elif fa.shape[-1] == 1:
        out = (fa * fb).sum(1).unsqueeze(1)
    else:
        return torch.bmm(fa.transpose(1, 2), fb) if into is None else torch.baddbmm(into, fa.transpose(1, 2), fb)
    return out if into is None else into + out


def mlp_forward(params: list[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output [B, N, out] and each layer's input (x, then the ReLU outputs) for the backward pass."""
    inputs = [x]
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = linear(h, params[2 * i], params[2 * i + 1])
        if i < n_layers - 1:
            h = torch.relu(h)
            inputs.append(h)
    return h, inputs


def flat_task_losses(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`task_losses` on the fast path: [B, N, 1] -> [B]."""
    return (mlp_forward(params, x)[0] - y).pow(2).mean(dim=(1, 2))


def mse_scale(y: torch.Tensor) -> float:
    """d(per-task MSE)/d(out) = mse_scale · (out − y)."""
    return 2.0 / (y.shape[-2] * y.shape[-1])


def _combined_scale(loss_scale: float | torch.Tensor, y: torch.Tensor) -> float | torch.Tensor:
    return loss_scale * mse_scale(y)


def _times(t: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    return torch.mul(t, factor) if isinstance(factor, torch.Tensor) else scaled(t, factor)


def mlp_gradients(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  trainable: list[bool] | None = None, tape: dict | None = None,
                  loss_scale: float | torch.Tensor = 1.0) -> list[torch.Tensor | None]:
    """Per-task gradients [B, ...] of each task's MSE with respect to `params` (None where not trainable).

    The backward pass of `mlp_forward` by hand: dL/dout = 2(out − y)/(N·out); per layer
    dW = δᵀh, db = Σ_N δ, δ_below = (δW) ⊙ [h > 0] (`threshold_backward`, the op autograd
    uses for ReLU, whose own derivative is itself: the ReLU mask is a constant). It stops at
    the lowest trainable layer. Differentiable: under autograd it yields the second-order
    meta-gradient; under `torch.no_grad()` it is a plain (first-order) gradient. `tape`
    receives the layer inputs and deltas for `mlp_gradients_backward`.

    `loss_scale` (a float, or per task [B, 1, 1]) scales each task's loss, hence its
    gradient, at the cost of scaling the [B, N, out] output error only: an SGD step's rate
    folded in here saves multiplying every per-task weight copy.
    """
    n_layers = len(params) // 2
    trainable = trainable or [True] * len(params)
    lowest = min(i // 2 for i, t in enumerate(trainable) if t) if any(trainable) else n_layers
    grads: list[torch.Tensor | None] = [None] * len(params)
    if lowest == n_layers:
        return grads
    out, inputs = mlp_forward(params, x)
    delta = _times(out - y, _combined_scale(loss_scale, y))
    deltas = [None] * n_layers
    for i in reversed(range(lowest, n_layers)):
        h = inputs[i]
        deltas[i] = delta
        if trainable[2 * i]:
            grads[2 * i] = _outer(delta, h, delta.shape[0])
        if trainable[2 * i + 1]:
            grads[2 * i + 1] = delta.sum(1)
        if i > lowest:
            delta = torch.ops.aten.threshold_backward(_times_weight(delta, params[2 * i]), h, 0)
    if tape is not None:
        tape.update(inputs=inputs, deltas=deltas)
    return grads


# -- reverse mode by hand: vector-Jacobian products of `mlp_forward` and `mlp_gradients` ------
# Adjoints of parameters come back shaped like the parameters: [G, ...], summed over the
# tasks that share a set. Layer inputs h come from the forward's tape; ReLU masks are
# recovered from them (h > 0) by threshold_backward.

def mlp_backward(params, inputs, out_bar, h_bar=None, need_input=False, into=None):
    """Adjoints of `mlp_forward`'s parameters (and input) given d(loss)/d(out) `out_bar` [B, N, out].

    `h_bar[i]` adds an adjoint for layer i's input from elsewhere; `into` holds adjoints to add to.
    Returns (param adjoints, input adjoint or None).
    """
    n_layers = len(params) // 2
    bars = list(into) if into is not None else [None] * len(params)
    a_bar, x_bar = out_bar, None
    for i in reversed(range(n_layers)):
        weight, h = params[2 * i], inputs[i]
        groups = weight.shape[0]
        bars[2 * i] = _outer(a_bar, h, groups, bars[2 * i])
        bias_bar = _fold(a_bar, groups).sum(1)
        bars[2 * i + 1] = bias_bar if bars[2 * i + 1] is None else bars[2 * i + 1] + bias_bar
        if i > 0 or need_input:
            back = _times_weight(a_bar, weight, None if h_bar is None else h_bar[i])
            if i > 0:
                a_bar = torch.ops.aten.threshold_backward(back, h, 0)
            else:
                x_bar = back
    return bars, x_bar


def mlp_gradients_backward(params, tape: dict, grad_bars: list[torch.Tensor], y: torch.Tensor,
                           loss_scale: float | torch.Tensor = 1.0, need_input=False):
    """Adjoints of `params` (and of x) through `mlp_gradients(params, x, y, tape=tape,
    loss_scale=loss_scale)` (all layers trainable), given adjoints `grad_bars` [B, ...] of the
    per-task gradients: the Hessian-vector product of the support loss, written out layer by
    layer (Pearlmutter's R-op, reversed).
    """
    inputs, deltas = tape["inputs"], tape["deltas"]
    n_layers = len(params) // 2
    bars: list = [None] * len(params)
    h_bar: list = [None] * n_layers
    d_bar = None  # adjoint of layer i's delta
    for i in range(n_layers):
        w_bar, b_bar, h, delta = grad_bars[2 * i], grad_bars[2 * i + 1], inputs[i], deltas[i]
        # grad_W = δᵀh and grad_b = Σ_N δ  =>  δ̄ += h·W̄ᵀ + b̄, h̄ += δ·W̄
        own = linear(h, w_bar, b_bar)
        d_bar = own if d_bar is None else d_bar + own
        if i > 0 or need_input:
            h_bar[i] = _times_weight(delta, w_bar)
        if i < n_layers - 1:
            # δ_i = (δ_{i+1}·W_{i+1}) ⊙ [h_{i+1} > 0]
            u = torch.ops.aten.threshold_backward(d_bar, inputs[i + 1], 0)
            bars[2 * i + 2] = _outer(deltas[i + 1], u, params[2 * i + 2].shape[0])
            d_bar = linear(u, params[2 * i + 2])
    # δ_last = scale·(out − y)
    return mlp_backward(params, inputs, _times(d_bar, _combined_scale(loss_scale, y)), h_bar, need_input, into=bars)
