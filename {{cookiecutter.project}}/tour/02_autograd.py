"""Chapter 2: automatic differentiation with torch.autograd.

How operations are recorded into a graph, how ``backward`` fills ``.grad``, why gradients
accumulate until you zero them, and the two ways to switch recording off.
"""

# %% [markdown]
# # Automatic Differentiation: torch.autograd
#
# Training a network means following the gradient of a loss with respect to millions of
# parameters. autograd computes those gradients with reverse-mode differentiation: it
# remembers each operation of the forward pass and then applies the chain rule backwards.

# %% Concept of Autograd
import torch

torch.manual_seed(0)

x = torch.linspace(-2, 2, 5, requires_grad=True)
y = (x**3 - 2 * x).sum()
y.backward()
analytic = 3 * x.detach() ** 2 - 2  # d/dx (x^3 - 2x)
print("x:          ", x.tolist())
print("autograd:   ", x.grad.tolist())
print("by hand:    ", analytic.tolist())
assert torch.allclose(x.grad, analytic)

# A finite-difference check gives the same numbers (up to float error).
eps = 1e-3
x0 = x.detach().double()
numeric = (((x0 + eps) ** 3 - 2 * (x0 + eps)) - ((x0 - eps) ** 3 - 2 * (x0 - eps))) / (2 * eps)
assert torch.allclose(numeric.float(), x.grad, atol=1e-4)

# %% Computational Graphs
# Each result of a tracked operation points to the node that created it (grad_fn), and
# each node points to the nodes of its inputs (next_functions): a directed acyclic graph
# whose sources are the leaves (tensors you created, shown as AccumulateGrad).
a = torch.tensor(2.0, requires_grad=True)
b = torch.tensor(3.0, requires_grad=True)
c = a * b
d = c + a
e = d.exp()


def show(node, depth=0):
    """Print the graph below ``node`` as an indented tree."""
    label = type(node).__name__
    if hasattr(node, "variable"):
        label += f" (leaf holding {node.variable.item()})"
    print("  " * depth + label)
    for child, _ in node.next_functions:
        if child is not None:
            show(child, depth + 1)


show(e.grad_fn)
assert type(e.grad_fn).__name__ == "ExpBackward0"
assert type(d.grad_fn.next_functions[0][0]).__name__ == "MulBackward0"
assert a.is_leaf and b.is_leaf and not c.is_leaf and a.grad_fn is None

e.backward()
# de/da = e * (b + 1), de/db = e * a
assert torch.isclose(a.grad, e.detach() * (b.detach() + 1))
assert torch.isclose(b.grad, e.detach() * a.detach())

# %% requires_grad Attribute
plain = torch.ones(3)
weights = torch.ones(3, requires_grad=True)
print("plain.requires_grad:", plain.requires_grad, "| weights.requires_grad:", weights.requires_grad)
assert not plain.requires_grad  # factory functions default to no tracking
assert (plain * 2).grad_fn is None  # nothing is recorded without a tracked input
assert (plain * weights).requires_grad  # one tracked input is enough to record

plain.requires_grad_()  # switch tracking on later, in place (leaves only)
assert plain.requires_grad

layer = torch.nn.Linear(3, 1)
assert all(p.requires_grad for p in layer.parameters())  # parameters track by default
layer.weight.requires_grad_(False)  # "freezing" a parameter, as in fine-tuning
layer(torch.ones(1, 3)).sum().backward()
assert layer.weight.grad is None and layer.bias.grad is not None

# %% .backward() Method
w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
out = w * w  # not a scalar
try:
    out.backward()
    raise AssertionError("backward on a non-scalar needs a gradient argument")
except RuntimeError as err:
    print("non-scalar backward:", err)
out.backward(gradient=torch.ones(3))  # equivalent to out.sum().backward()
assert w.grad.tolist() == [2.0, 4.0, 6.0]

# The graph's saved tensors are freed after backward, so a second pass fails...
z = (w * w).sum()
z.backward()
try:
    z.backward()
    raise AssertionError("a second backward should fail once the graph is freed")
except RuntimeError as err:
    print("second backward:", str(err).split(".")[0])
# ...unless the first pass keeps it.
z = (w * w).sum()
z.backward(retain_graph=True)
z.backward()

# %% .grad Attribute
p = torch.tensor([1.0, -1.0], requires_grad=True)
hidden = p * 3
hidden.retain_grad()  # ask autograd to keep the gradient of a non-leaf too
loss = (hidden**2).sum()
loss.backward()
print("p.grad:", p.grad.tolist(), "| hidden.grad:", hidden.grad.tolist())
assert p.grad.tolist() == [18.0, -18.0]  # d/dp (3p)^2 = 18p
assert hidden.grad.tolist() == [6.0, -6.0]  # d/dh h^2 = 2h
# Without retain_grad() a non-leaf keeps no .grad (reading it would give None and a warning).
assert hidden.retains_grad and not (p * 3).retains_grad

# %% Gradient Manipulation
q = torch.tensor(1.0, requires_grad=True)
for step in range(3):
    (4 * q).backward()
    print(f"after backward #{step + 1}: q.grad = {q.grad.item()}")
assert q.grad.item() == 12.0  # 4 + 4 + 4: backward ADDS to .grad

q.grad = None  # what optimizer.zero_grad() does by default (set_to_none=True)
(4 * q).backward()
assert q.grad.item() == 4.0

# Accumulation is a feature: summing gradients of several small batches emulates a
# bigger batch (gradient accumulation), as long as you zero once per optimizer step.
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
data = torch.randn(8, 2)
model(data).pow(2).mean().backward()
full_batch_grad = model.weight.grad.clone()
optimizer.zero_grad()
assert model.weight.grad is None
for half in data.chunk(2):
    (model(half).pow(2).mean() / 2).backward()
assert torch.allclose(model.weight.grad, full_batch_grad, atol=1e-6)

# detach() returns a tensor that shares memory but is cut from the graph.
r = torch.tensor([2.0], requires_grad=True)
frozen = (r * 5).detach()
assert not frozen.requires_grad and frozen.grad_fn is None
loss = (r * frozen).sum()  # frozen acts as a constant
loss.backward()
assert r.grad.item() == 10.0  # not 20: no gradient flowed through the detached copy

# %% Disabling Gradient Tracking
weight = torch.ones(3, requires_grad=True)
with torch.no_grad():
    under_no_grad = weight * 2
with torch.inference_mode():
    under_inference = weight * 2
print(
    "no_grad result requires_grad:",
    under_no_grad.requires_grad,
    "| inference_mode result is an inference tensor:",
    under_inference.is_inference(),
)
assert not under_no_grad.requires_grad and not under_inference.requires_grad
assert under_inference.is_inference() and not under_no_grad.is_inference()

# The difference: a no_grad result is an ordinary tensor that later autograd code can use.
(under_no_grad * weight).sum().backward()
assert weight.grad.tolist() == [2.0, 2.0, 2.0]

# An inference tensor skips autograd bookkeeping entirely (a bit faster), and in exchange
# it can never enter a graph that is recorded later.
try:
    (under_inference * weight).sum().backward()
    raise AssertionError("inference tensors must not be saved for backward")
except RuntimeError as err:
    print("inference tensor in autograd:", str(err).split(".")[0])
    assert "Inference tensors" in str(err)
assert not under_inference.clone().is_inference()  # clone outside the mode to reuse it


# Both are context managers and decorators; use inference_mode for pure prediction code.
@torch.inference_mode()
def predict(inputs):
    return inputs @ weight


assert predict(torch.ones(2, 3)).is_inference()
