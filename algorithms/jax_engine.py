"""The `jax` backend: MAML and first-order MAML as the JAX community writes them.

Pure functions, composed: `loss` -> `inner_update` -> `maml_loss` (one task) ->
`batch_maml_loss` (`jax.vmap` over the meta-batch) -> `jax.value_and_grad`, and one
`jax.jit`-compiled step that applies optax's Adam. The inner loop is a Python loop, unrolled
at trace time (S is static), as in the usual tutorials; first-order MAML is the same code
with `jax.lax.stop_gradient` on the inner gradient.

It is a cross-framework check of the numbers and the strongest speed peer of the `func`
engine, so it starts from the same weights (`make_network(generator, init=...)`'s torch parameters,
in torch's [out, in] layout) and reads the same torch batches; `meta_gradient`, `step` and
`adaptation` hand back torch tensors, so the shared runner and the shared (torch)
evaluation run it unchanged.

Decisions:
* jax is imported on the first learner, not with the registry: the other backends pay no
  import time or memory for it, and the process-wide settings below can still be applied.
* Device: the arrays are committed to the run's device (`cpu`: JAX's CPU device even where
  a GPU exists; `cuda[:i]`: that GPU), so jit runs where they live. JAX does not preallocate
  GPU memory (XLA_PYTHON_CLIENT_PREALLOCATE=false): torch shares the card.
* Threads: XLA's CPU thread pool is sized once per process, when its CPU client starts; the
  first learner sizes it to torch's thread count (PJRT_NPROC, which this jaxlib honours,
  plus the XLA flags older ones read), so a one-thread worker is one thread in both
  frameworks. Environment variables already set by the user win.
* Precision: float32, like the other backends, with matrix products at full float32 precision
  also on GPUs (JAX's GPU default is TF32: 9e-4 relative meta-gradient error on an H100);
  `double()` moves a learner to float64 (scoped `jax.enable_x64`, nothing process-wide) for
  the float64 cross-checks.
* A single run per learner: no ensembles (the sweep ensembles `func` cells only).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache, partial

import torch

from algorithms.base import Adaptation, HyperParams, MetaLearner, mse_only_refusal
from algorithms.network import as_spec, make_network
from tasks.problem import refuse_unless_mse

jax = jnp = optax = None  # imported by `load` on first use

REQUIRED = ("jax", "jaxlib", "optax")


def missing_packages() -> list[str]:
    """The packages the backend needs that are not installed (empty: it can run)."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def load(threads: int | None = None):
    """Import jax (once per process), after the settings that must precede its CPU client."""
    global jax, jnp, optax
    if jax is None:
        missing = missing_packages()
        if missing:
            raise RuntimeError(f"the 'jax' backend needs {', '.join(missing)}: install the pins in requirements.txt "
                               "(make setup)")
        threads = threads or torch.get_num_threads()
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("PJRT_NPROC", str(threads))
        if threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
        import jax as _jax
        import jax.numpy as _jnp
        import optax as _optax

        jax, jnp, optax = _jax, _jnp, _optax
    return jax


def jax_device(device: str | torch.device):
    """The JAX device for a torch device string: cpu, or the same-index GPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return jax.devices("cpu")[0]
    if device.type == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError as error:
            raise RuntimeError(f"device {str(device)!r} requested but JAX sees no GPU ({error})") from None
        return gpus[device.index or 0]
    raise ValueError(f"the jax backend runs on 'cpu' or 'cuda', got {str(device)!r}")


def to_jax(t: torch.Tensor, device):
    """A torch tensor as a JAX array on `device` (a copy: JAX arrays are immutable, torch's are not)."""
    if t.device.type == "cpu":
        return jax.device_put(t.detach().numpy(), device)
    return jax.device_put(jnp.from_dlpack(t.detach().contiguous().clone()), device)


def to_torch(a, device: torch.device) -> torch.Tensor:
    """A JAX array as a torch tensor on `device`, sharing nothing with JAX's buffer."""
    return torch.from_dlpack(a).to(device).clone()


# -- the pure functions -----------------------------------------------------------------------

def mlp(params, x):
    """ReLU MLP in torch's layout: params = [w1, b1, w2, b2, ...], w [out, in]; x [N, in].

    Products at full float32 precision: JAX's GPU default (TF32, ~1e-3 relative) is not what
    torch computes, and the backends must agree to 1e-5.
    """
    *hidden, (w, b) = list(zip(params[::2], params[1::2]))
    for wi, bi in hidden:
        x = jax.nn.relu(jnp.matmul(x, wi.T, precision="highest") + bi)
    return jnp.matmul(x, w.T, precision="highest") + b


def loss(params, x, y):
    return jnp.mean((mlp(params, x) - y) ** 2)


def inner_update(params, x, y, lr, first_order=False):
    """One SGD step on one task's support set."""
    grads = jax.grad(loss)(params, x, y)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    return [p - lr * g for p, g in zip(params, grads)]


def maml_loss(params, xs, ys, xq, yq, lr, steps, first_order=False):
    """Query loss of one task after `steps` inner updates."""
    for _ in range(steps):
        params = inner_update(params, xs, ys, lr, first_order)
    return loss(params, xq, yq)


def batch_maml_loss(params, xs, ys, xq, yq, lr, steps, first_order=False):
    """Mean over the meta-batch: the tasks are `vmap`ped, the initialisation shared."""
    task_loss = partial(maml_loss, lr=lr, steps=steps, first_order=first_order)
    return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq))


@lru_cache(maxsize=None)
def programs(steps: int, first_order: bool, lr_base: float, lr_meta: float):
    """The jitted meta-gradient and Adam step, and the optimiser (shared by learners with the same settings)."""
    optimizer = optax.adam(lr_meta)
    value_and_grad = jax.value_and_grad(partial(batch_maml_loss, lr=lr_base, steps=steps, first_order=first_order))

    @jax.jit
    def meta_gradient(params, xs, ys, xq, yq):
        return value_and_grad(params, xs, ys, xq, yq)

    @jax.jit
    def step(params, opt_state, xs, ys, xq, yq):
        value, grads = value_and_grad(params, xs, ys, xq, yq)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return meta_gradient, step, optimizer


# -- the learner ------------------------------------------------------------------------------

class JaxLearner(MetaLearner):
    """MAML on JAX behind the torch `MetaLearner` interface (torch in, torch out)."""

    stacked_batches = False
    n_members = 1
    first_order = False

    engine = "jax"
    thread_invariant = True  # XLA does not use torch's threads; the shared evaluation is invariant (tested with func)

    @classmethod
    def covers_network(cls, network) -> bool:
        return as_spec(network).activation == "relu"

    @classmethod
    def problem_refusal(cls, problem):
        return mse_only_refusal(problem, "the jax backend")  # its jitted programs are written for 1 -> 1 MSE

    def __init__(self, hp: HyperParams, generator: torch.Generator, device: str = "cpu", network=None, problem=None,
                 init: str = "torch"):
        refuse_unless_mse(problem, "the jax backend")  # its jitted programs are written for MSE
        if isinstance(hp, (list, tuple)) or isinstance(generator, (list, tuple)):
            raise ValueError("the jax backend trains one run per learner; ensembles are a 'func' feature")
        super().__init__(hp, generator, device)
        load()
        self.jax_device = jax_device(self.device)
        self.dtype = torch.float32
        self.params = [to_jax(p, self.jax_device) for p in make_network(generator, network=network, init=init).parameters()]
        self.jit_meta_gradient, self.jit_step, optimizer = programs(hp.inner_steps, self.first_order, hp.lr_base, hp.lr_meta)
        # committed to the device like the step's outputs: optax makes Adam's step count on the default
        # device, uncommitted, and jit keys its cache on that, so the second step compiled again (0.5 s)
        self.opt_state = jax.device_put(optimizer.init(self.params), self.jax_device)

    @property
    def meta_parameters(self) -> list[torch.Tensor]:
        """Copies of the current weights as torch tensors on the run's device."""
        return [to_torch(p, self.device) for p in self.params]

    def double(self) -> "JaxLearner":
        """This learner in float64 (weights and Adam state), for float64 cross-checks."""
        with jax.enable_x64(True):
            self.params = [p.astype(jnp.float64) for p in self.params]
            self.opt_state = jax.tree.map(lambda s: s.astype(jnp.float64) if s.dtype == jnp.float32 else s,
                                          self.opt_state)
        self.dtype = torch.float64
        return self

    def jax_batch(self, batch) -> list:
        """(x_support, y_support, x_query, y_query) as JAX arrays on this learner's device and dtype."""
        if batch.x_support.dim() != 3:
            raise ValueError(f"the jax backend takes batches shaped [tasks, points, 1], got {tuple(batch.x_support.shape)}")
        return [to_jax(t.to(self.dtype), self.jax_device)
                for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query)]

    def meta_gradient(self, batch, iteration: int = 0):
        with jax.enable_x64(self.dtype == torch.float64):
            value, grads = self.jit_meta_gradient(self.params, *self.jax_batch(batch))
        return to_torch(value, self.device), [to_torch(g, self.device) for g in grads]

    def step(self, batch, iteration: int = 0):
        with jax.enable_x64(self.dtype == torch.float64):
            self.params, self.opt_state, value = self.jit_step(self.params, self.opt_state, *self.jax_batch(batch))
        return {"loss": to_torch(value, self.device)}

    def adaptation(self, member: int = 0) -> Adaptation:
        return Adaptation(self.meta_parameters, [self.hp.lr_base] * len(self.params))


class JaxMAML(JaxLearner):
    """Second-order MAML (Finn et al. 2017) on JAX."""


class JaxFOMAML(JaxLearner):
    """First-order MAML on JAX: the inner gradients are constants (`stop_gradient`)."""

    first_order = True
