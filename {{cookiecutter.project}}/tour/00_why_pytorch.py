"""Chapter 0: why PyTorch, and what "define-by-run" means in practice.

Run it as a script (``python tour/00_why_pytorch.py``) or open it in VS Code / Jupyter,
where every ``# %%`` line starts a cell. Each claim made in the text is checked by an
``assert`` right below it, so a script that finishes is a tour whose claims still hold
for the PyTorch version you have installed.
"""

# %% [markdown]
# # Introduction to Pytorch
#
# PyTorch is a tensor library with automatic differentiation, a neural-network toolkit
# built on top of it, and a large set of companion libraries. This first chapter is about
# the ideas behind it; the later chapters go through the pieces one by one.

# %% [markdown]
# ## Core Concepts and Motivation
#
# Three ideas carry most of PyTorch:
#
# 1. **Tensors**: n-dimensional arrays that can live on a CPU or an accelerator.
# 2. **Autograd**: every operation on a tensor that needs gradients is recorded while it
#    runs, so derivatives come for free.
# 3. **Modules**: Python classes that hold parameters and describe a computation.

# %% What is PyTorch?
import contextlib
import importlib.util
import io
import logging
import warnings

import torch

torch.manual_seed(0)
print("torch", torch.__version__)

# A tensor, an operation on it, and its gradient: the whole library in three lines.
w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
loss = (w**2).sum()
loss.backward()
print("w =", w.tolist(), " d(sum w^2)/dw =", w.grad.tolist())
assert torch.equal(w.grad, 2 * w.detach())

# %% [markdown]
# ## Key Features
#
# * **Define-by-run**: the graph used for gradients is whatever your Python code did
#   on this call, see the last section of this chapter.
# * **Pythonic**: models are plain classes, loops are `for` loops, and you can `print`
#   or set a breakpoint anywhere in a forward pass.
# * **Accelerators**: the same code runs on CUDA (NVIDIA), ROCm (AMD, exposed through the
#   `cuda` device name), Apple's MPS, and more, by moving tensors with `.to(device)`.
# * **Ecosystem**: domain libraries (torchvision, torchaudio), Lightning, Hugging Face,
#   exporters (ONNX, `torch.export`) and compilers (`torch.compile`).


# %% Key Features
class Doubler(torch.nn.Module):
    """A module is an ordinary Python class: it can print, branch and loop."""

    def forward(self, x):
        print(f"  inside forward: x has shape {tuple(x.shape)}")
        return 2 * x


out = Doubler()(torch.ones(2, 3))
assert out.shape == (2, 3) and bool((out == 2).all())

device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
print("the best device on this machine:", device)
on_device = torch.ones(3, device=device) * 2
assert on_device.device.type == device

companions = ["torchvision", "torchaudio", "lightning", "torchmetrics", "tensorboard"]
installed = [name for name in companions if importlib.util.find_spec(name) is not None]
print("companion libraries installed here:", installed)

# %% [markdown]
# ## Why Choose PyTorch?
#
# It is easy to start with (NumPy-like API, eager execution), flexible for research
# (any Python control flow is allowed inside a model), widely used (most papers with code
# and most pretrained models on the Hugging Face Hub ship PyTorch weights), fast (cuDNN,
# cuBLAS, `torch.compile`), and the same model object can be exported for production
# with `torch.export` or ONNX (chapter 9).
#
# The example below shows the "easy to debug" argument: an error raised inside a model
# is a normal Python exception, pointing at the line that caused it.

# %% Why Choose PyTorch?
layer = torch.nn.Linear(4, 2)
try:
    layer(torch.ones(3, 5))
except RuntimeError as err:
    print("a plain Python exception with a readable message:", err)
    assert "cannot be multiplied" in str(err)

# %% [markdown]
# ## Dynamic vs. Static Computation Graphs
#
# In a *define-and-run* framework (TensorFlow 1.x, Theano) you first build a graph,
# then feed data through it many times. PyTorch is *define-by-run*: the graph is recorded
# while the forward pass executes, so each input can produce a different graph.
# Below, the branch taken and the number of loop iterations both depend on the data.


# %% A forward pass with data-dependent control flow
def forward(x):
    h = x * 3
    if h.sum() > 0:  # the branch depends on the values, not only the shapes
        h = torch.relu(h).pow(2)
    else:
        h = torch.tanh(h)
    while h.abs().max() > 10:  # the number of iterations depends on the values too
        h = h / 4
    return h.sum()


def graph_ops(tensor):
    """Walk the autograd graph backwards from ``tensor`` and list the node names."""
    names, stack, seen = [], [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


positive = torch.tensor([1.0, 2.0], requires_grad=True)
larger = torch.tensor([1.0, 10.0], requires_grad=True)
negative = torch.tensor([-1.0, -2.0], requires_grad=True)
graph_pos = graph_ops(forward(positive))
graph_large = graph_ops(forward(larger))
graph_neg = graph_ops(forward(negative))
print("graph for (1, 2):  ", graph_pos)
print("graph for (1, 10): ", graph_large)
print("graph for (-1, -2):", graph_neg)
assert "PowBackward0" in graph_pos and "TanhBackward0" not in graph_pos
assert "TanhBackward0" in graph_neg and "PowBackward0" not in graph_neg
# (1, 2) -> (9, 36) after relu and square: one division by 4 brings the max under 10.
# (1, 10) -> (9, 900): four divisions are needed. tanh is bounded, so no loop at all.
assert [g.count("DivBackward0") for g in (graph_pos, graph_large, graph_neg)] == [1, 4, 0]

# %% [markdown]
# ### A captured (static) graph freezes one path
#
# Tracing (`torch.jit.trace`, now deprecated in favour of `torch.export` and
# `torch.compile`) runs the function once and records the operations it saw. The `if`
# is evaluated during the trace and disappears: the trace replays the positive branch
# for every input, which is exactly the define-and-run behaviour.

# %% A captured (static) graph freezes one path
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the tracer warns about this exact pitfall
    traced = torch.jit.trace(forward, torch.tensor([1.0, 2.0]), check_trace=False)

x_neg = torch.tensor([-1.0, -2.0])
eager_value, traced_value = forward(x_neg).item(), traced(x_neg).item()
print(f"eager result for a negative input: {eager_value:.4f}; traced result: {traced_value:.4f}")
assert abs(eager_value - torch.tanh(3 * x_neg).sum().item()) < 1e-6
assert traced_value != eager_value  # the trace kept the relu/pow branch

# %% [markdown]
# `torch.export` is stricter: rather than silently freezing a branch, it refuses a
# Python `if` on tensor values. Data-dependent branches must be written with
# `torch.cond`, which keeps both branches inside the exported graph.


# %% torch.export keeps both branches only through torch.cond
class PythonIf(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1


class WithCond(torch.nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: t - 1, (x,))


export_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
previous_level = export_log.level
export_log.setLevel(logging.ERROR)
captured_stderr = io.StringIO()
try:
    with contextlib.redirect_stderr(captured_stderr):  # export prints its partial graph there
        torch.export.export(PythonIf(), (torch.ones(3),))
    raise AssertionError("export should reject a Python if on tensor values")
except RuntimeError as err:
    print("torch.export refused the Python if:", type(err).__name__)
    print("  ", str(err).splitlines()[0][:100])
finally:
    export_log.setLevel(previous_level)

exported = torch.export.export(WithCond(), (torch.ones(3),))
print(exported.graph_module.code.strip())
assert "cond" in exported.graph_module.code
both_ways = exported.module()
assert torch.equal(both_ways(torch.ones(3)), torch.full((3,), 2.0))
assert torch.equal(both_ways(-torch.ones(3)), torch.full((3,), -2.0))
print("the exported graph follows the data on both branches")
