"""Chapter 11: PyTorch for readers who know TensorFlow or JAX.

Static versus dynamic graphs, ``torch.compile`` as the counterpart of ``tf.function`` and
``jax.jit`` (run with a graph-recording backend, so it is fast on any CPU), and the
functional side of PyTorch in ``torch.func``: ``grad``, ``vmap`` and ``functional_call``.
"""

# %% [markdown]
# # Comparison with Other Frameworks
#
# A rough dictionary (each row is "about the same idea", not an exact equivalent):
#
# | TensorFlow / Keras | JAX / Flax | PyTorch |
# |---|---|---|
# | `tf.Tensor`, `tf.Variable` | `jax.Array`, parameter pytrees | `torch.Tensor`, `nn.Parameter` |
# | `tf.GradientTape` | `jax.grad` | autograd (`.backward()`, `torch.autograd.grad`), `torch.func.grad` |
# | `tf.function` (graph mode) | `jax.jit` | `torch.compile`, `torch.export` |
# | `tf.vectorized_map` | `jax.vmap` | `torch.func.vmap` |
# | `keras.Model.fit` | Flax training loop / Optax | your loop, or Lightning's `Trainer` |
# | `keras.layers.Dense` | `flax.linen.Dense` | `nn.Linear` |
# | SavedModel, TFLite | `jax.export` | `torch.export`, ExecuTorch, ONNX |
# | `tf.random.Generator` | explicit `PRNGKey`s | global RNG or `torch.Generator` |
# | channels-last images (NHWC) | NHWC by convention | channels-first (NCHW) by default |

# %% PyTorch vs. TensorFlow
import time

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

torch.manual_seed(0)

# TF2's GradientTape records inside a `with` block and returns gradients on request.
# PyTorch always records (for tensors that require grad), and torch.autograd.grad is the
# closest analogue of tape.gradient: it returns the gradients instead of filling .grad.
w = torch.tensor([1.0, 2.0], requires_grad=True)
loss = (w**2).sum()
(dw,) = torch.autograd.grad(loss, [w])
assert dw.tolist() == [2.0, 4.0] and w.grad is None

# Graph mode. TF1 built a static graph first and ran it later; TF2 runs eagerly and
# traces Python functions into graphs with tf.function. torch.compile plays the second
# role: TorchDynamo reads the Python bytecode, captures straight-line tensor code into
# FX graphs and hands them to a backend (Inductor by default, which generates kernels).
# A custom backend lets us look at the captured graphs; it then runs them as they are,
# so this cell takes a moment even on a small CPU.
captured = []


def recording_backend(graph_module, example_inputs):
    captured.append(graph_module)
    return graph_module.forward  # a real backend would return optimized code


def scaled(x):
    y = torch.sin(x) * 2
    if y.sum() > 0:  # data-dependent: tf.function would need tf.cond, jax.jit lax.cond
        return y.cos()
    return y.exp()


compiled = torch.compile(scaled, backend=recording_backend)
start = time.perf_counter()
for value in (1.0, -1.0, 2.0):
    x = torch.full((3,), value)
    assert torch.allclose(compiled(x), scaled(x))
print(f"compiled and ran 3 calls in {time.perf_counter() - start:.2f} s; graphs captured: {len(captured)}")
for index, graph in enumerate(captured):
    ops = [
        getattr(node.target, "__name__", node.target)
        for node in graph.graph.nodes
        if node.op in ("call_function", "call_method")
    ]
    print(f"  graph {index}: {ops}")
# The `if` causes a "graph break": one graph up to the condition, then Python decides,
# then one graph per branch actually taken. Unlike tracing, nothing is silently frozen;
# unlike tf.function, no special control-flow op is required.
assert len(captured) == 3
# The third call reused the cached graphs (guards checked that shapes/dtypes still match).

# %% [markdown]
# For real speed-ups use `torch.compile(model)` (Inductor) on a GPU or a many-core CPU;
# the first call compiles (seconds to minutes), later calls are fast. `backend="eager"`
# runs the capture step only, which is how you check that a model compiles cleanly.

# %% PyTorch vs. JAX
# JAX transforms pure functions of explicit parameters. torch.func offers the same
# transforms on PyTorch functions, and functional_call turns a stateful nn.Module into a
# pure function of a parameter dictionary (like Flax's apply(params, x)).
model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
params = {name: p.detach() for name, p in model.named_parameters()}
x_batch, y_batch = torch.randn(16, 3), torch.randn(16, 1)


def loss_fn(params, x, y):
    prediction = functional_call(model, params, (x,))
    return ((prediction - y) ** 2).mean()


# grad: d loss / d params, returned as a dict with the same keys (a "pytree").
grads = grad(loss_fn)(params, x_batch, y_batch)
print("torch.func.grad returns:", {k: tuple(v.shape) for k, v in grads.items()})
model(x_batch).sub(y_batch).pow(2).mean().backward()  # the object-oriented way, for comparison
assert all(torch.allclose(grads[name], p.grad, atol=1e-6) for name, p in model.named_parameters())


# vmap: per-sample gradients in one call, which is awkward with .backward().
def sample_loss(params, x, y):
    return loss_fn(params, x.unsqueeze(0), y.unsqueeze(0))


per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x_batch, y_batch)
print("per-sample gradient of the first weight:", tuple(per_sample["0.weight"].shape))
assert per_sample["0.weight"].shape == (16, 8, 3)
assert torch.allclose(per_sample["0.weight"].mean(0), grads["0.weight"], atol=1e-6)
loop = torch.stack([grad(sample_loss)(params, x_batch[i], y_batch[i])["2.bias"] for i in range(16)])
assert torch.allclose(per_sample["2.bias"], loop, atol=1e-6)

# Transforms compose, as in JAX: the Hessian of a scalar function as jacobian-of-jacobian.
hessian = jacrev(jacrev(lambda v: (v**3).sum()))(torch.tensor([1.0, 2.0]))
assert torch.allclose(hessian, torch.diag(torch.tensor([6.0, 12.0])))

# A pure update step in JAX style: new parameters out, nothing mutated in place.
new_params = {name: p - 0.1 * grads[name] for name, p in params.items()}
assert loss_fn(new_params, x_batch, y_batch) < loss_fn(params, x_batch, y_batch)

# jit: torch.compile also accepts torch.func transforms, e.g. torch.compile(grad(loss_fn)),
# the counterpart of jax.jit(jax.grad(loss_fn)). (Not run here: tracing through the
# transform takes a few seconds on a small CPU.)

# Randomness: JAX threads explicit keys; PyTorch has a global generator, and explicit
# torch.Generator objects when you want JAX-like reproducibility per call.
g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))

# %% [markdown]
# ## Static vs. dynamic graphs, in short
#
# * **Dynamic (PyTorch eager, TF2 eager, JAX outside `jit`)**: Python runs every op;
#   easy to debug, any control flow allowed, some per-op overhead.
# * **Static (TF1, `tf.function`, `jax.jit`, `torch.export`)**: a graph is captured once
#   and optimized as a whole; control flow must be expressed with graph ops (`cond`,
#   `while_loop`) and shapes are specialized or declared dynamic.
# * **PyTorch 2 (`torch.compile`)** mixes the two: it captures graphs where it can and
#   falls back to Python at graph breaks, so programs stay correct while the hot parts
#   get compiled.
