"""Chapter 10: debugging PyTorch code.

The real shape-, dtype- and device-mismatch errors (caught and explained), what a
debugger sees inside ``forward``, NaN/Inf detection, anomaly mode naming the operation
that produced a NaN gradient, gradient norms for vanishing and exploding gradients, and
forward/backward hooks.
"""

# %% [markdown]
# # Debugging PyTorch Code
#
# Because PyTorch executes eagerly, a bug shows up at the line that causes it, as a
# normal Python exception, and every intermediate value can be inspected with ordinary
# tools. Most problems fall in three groups: shapes, devices/dtypes, and numerics.

# %% Common Errors
import math
import sys
import warnings

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny tensors: one thread is faster and not slowed by busy cores


def show_error(title, fn):
    """Run ``fn``, which must fail, and print the first line of its error."""
    try:
        fn()
    except (RuntimeError, ValueError, IndexError) as err:
        print(f"{title}:\n    {type(err).__name__}: {str(err).splitlines()[0]}")
        return str(err)
    raise AssertionError(f"{title}: expected an error")


layer = nn.Linear(20, 10)

# 1. Shape mismatch: the message names both matrices, (batch x features) and (in x out).
#    Here the data has 30 features but the layer expects 20: fix in_features or the data.
message = show_error("shape mismatch", lambda: layer(torch.randn(8, 30)))
assert "mat1 and mat2 shapes cannot be multiplied (8x30 and 20x10)" in message

# A classic variant: flattening conv features with the wrong size.
message = show_error("wrong view", lambda: torch.randn(4, 16, 5, 5).view(4, 16 * 4 * 4))
assert "shape '[4, 256]' is invalid" in message

# Losses check shapes too; CrossEntropyLoss wants (N, C) logits and (N,) class indices.
four_logits, two_labels = torch.randn(4, 3), torch.tensor([0, 1])
message = show_error("loss target shape", lambda: nn.CrossEntropyLoss()(four_logits, two_labels))
assert "batch_size" in message

# 2. dtype mismatch: labels or images often arrive as integers or float64.
message = show_error("dtype mismatch", lambda: layer(torch.randn(8, 20, dtype=torch.float64)))
assert "dtype" in message.lower() or "Double" in message

# 3. Device mismatch: model on one device, data on another. With a GPU the message is
#    "Expected all tensors to be on the same device, but found at least two devices,
#    cuda:0 and cpu!"; without one, the "meta" device stands in as the second device.
other = "cuda" if torch.cuda.is_available() else "meta"
message = show_error("device mismatch", lambda: layer(torch.randn(8, 20, device=other)))
assert "device" in message

# 4. Gradient flow: a tensor that was detached (or created under no_grad) silently cuts
#    the graph, and the parameters before it get no gradient at all.
encoder, decoder = nn.Linear(4, 4), nn.Linear(4, 1)
features = encoder(torch.randn(2, 4)).detach()  # the bug
decoder(features).sum().backward()
print("encoder.weight.grad after backward:", encoder.weight.grad)
assert encoder.weight.grad is None and decoder.weight.grad is not None


# %% Using Python Debugger (pdb, IDE debuggers)
# Put `breakpoint()` anywhere, including inside forward(), and run the script: pdb
# stops there, and you can print shapes (`p x.shape`), step (`n`, `s`) and continue
# (`c`). `python -m pdb -c continue script.py` stops at the line of an uncaught error
# instead. In VS Code, the "Tour: current file" and "Train" configurations in
# .vscode/launch.json do the same with a GUI, PyCharm's debugger works the same way, and
# PYTHONBREAKPOINT=0 turns every breakpoint() off.
#
# A tour must run unattended, so this cell replaces the interactive debugger with a hook
# that records what you would have looked at: the local variables at the breakpoint.
class Inspectable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3)

    def forward(self, x):
        h = self.conv(x)
        breakpoint()  # in a real session: pdb opens here with x and h in scope
        return h.mean(dim=(2, 3))


seen = {}


def record_locals(*args, **kwargs):
    caller = sys._getframe(1)  # the frame that called breakpoint()
    seen.update({name: tuple(v.shape) for name, v in caller.f_locals.items() if torch.is_tensor(v)})


previous_hook, sys.breakpointhook = sys.breakpointhook, record_locals
try:
    Inspectable()(torch.randn(2, 3, 8, 8))
finally:
    sys.breakpointhook = previous_hook
print("what the debugger would show at the breakpoint:", seen)
assert seen == {"x": (2, 3, 8, 8), "h": (2, 4, 6, 6)}

# %% Inspecting Tensors
values = torch.tensor([1.0, 0.0, -1.0]) / torch.tensor([0.0, 0.0, 1.0])  # 1/0, 0/0, -1/1
print("values:", values)
print("isnan:", torch.isnan(values).tolist(), "| isinf:", torch.isinf(values).tolist())
assert torch.isinf(values[0]) and torch.isnan(values[1]) and torch.isfinite(values[2])
assert not torch.isfinite(values).all()  # the one-line check to put in a training loop

# NaN is contagious: one bad element spoils every reduction that touches it.
assert torch.isnan(values.sum()) and torch.isnan(values.max())
assert values.nansum().item() == math.inf and torch.nan_to_num(values, nan=0.0, posinf=9.0)[0] == 9.0

# A tensor summary beats printing a million numbers.
big = torch.randn(1000, 100)
big[3, 7] = float("nan")
bad = torch.nonzero(~torch.isfinite(big))
print(
    f"shape {tuple(big.shape)}, dtype {big.dtype}, non-finite at {bad.tolist()}, "
    f"finite range [{big.nan_to_num().min():.2f}, {big.nan_to_num().max():.2f}]"
)
assert bad.tolist() == [[3, 7]]


# %% Anomaly detection: which operation produced the NaN gradient?
# sqrt(x) has an infinite derivative at 0; multiplied by a zero upstream gradient it
# becomes 0 * inf = NaN. Without anomaly mode the NaN just appears in .grad.
def run(x):
    return (torch.sqrt(x) * 0).sum()


x = torch.tensor([0.0, 4.0], requires_grad=True)
run(x).backward()
print("gradient without anomaly mode:", x.grad.tolist())
assert math.isnan(x.grad[0].item())

x.grad = None
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # anomaly mode also warns with the forward traceback
    with torch.autograd.detect_anomaly():  # slow: enable only while hunting a bug
        try:
            run(x).backward()
            raise AssertionError("anomaly mode should stop at the NaN")
        except RuntimeError as err:
            print("anomaly mode:", err)
            assert "SqrtBackward0" in str(err)  # the culprit is named


# %% Checking Gradients
def grad_norms(depth: int, activation: nn.Module, init_std: float | None = None):
    """Per-layer gradient norms of a deep stack of Linear layers, first layer first."""
    layers = []
    for _ in range(depth):
        linear = nn.Linear(32, 32)
        if init_std is not None:
            nn.init.normal_(linear.weight, std=init_std)
        layers += [linear, activation]
    net = nn.Sequential(*layers)
    net(torch.randn(16, 32)).pow(2).mean().backward()
    return [m.weight.grad.norm().item() for m in net if isinstance(m, nn.Linear)]


vanishing = grad_norms(20, nn.Sigmoid())  # sigmoid' <= 0.25: gradients shrink layer by layer
exploding = grad_norms(20, nn.Identity(), init_std=0.5)  # weights too large: signals grow ~2.8x per layer
healthy = grad_norms(20, nn.ReLU(), init_std=math.sqrt(2 / 32))  # He initialization
for name, norms in [("sigmoid", vanishing), ("large init", exploding), ("ReLU + He init", healthy)]:
    print(f"{name:>15}: first layer {norms[0]:.2e}, last layer {norms[-1]:.2e}")
assert vanishing[0] < 1e-6 * vanishing[-1]
assert min(exploding) > 1e6 * max(healthy)  # every layer's gradient is astronomically large
assert 1e-3 < healthy[0] / healthy[-1] < 1e3

# In a training loop: log the total norm, and clip it to survive occasional spikes.
model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
(model(torch.randn(16, 32)) * 1e4).pow(2).mean().backward()
total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # returns the norm BEFORE
after = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
print(f"gradient norm {total.item():.3e} clipped to {after.item():.3f}")
assert total.item() > 1.0 and abs(after.item() - 1.0) < 1e-3

# %% Hooks
# Forward hooks see a module's inputs and output; full backward hooks see the gradients
# flowing into and out of it; tensor hooks see one tensor's gradient. Always keep the
# handle and call .remove() when done, or the hook stays attached forever.
net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
activations, gradients, handles = {}, {}, []


def save_activation(name):
    def hook(module, inputs, output):
        activations[name] = output.detach()

    return hook


def save_gradient(name):
    def hook(module, grad_input, grad_output):
        gradients[name] = grad_output[0].detach()  # d loss / d (module output)

    return hook


for name, module in net.named_children():
    handles.append(module.register_forward_hook(save_activation(name)))
    handles.append(module.register_full_backward_hook(save_gradient(name)))

inputs = torch.randn(5, 8, requires_grad=True)  # so the first layer's grad_input exists too
loss = net(inputs).sum()
loss.backward()
print("activations:", {k: tuple(v.shape) for k, v in activations.items()})
print("gradients:  ", {k: tuple(v.shape) for k, v in gradients.items()})
dead = (activations["1"] == 0).float().mean().item()
print(f"fraction of ReLU outputs that are zero (dead for this batch): {dead:.2f}")
assert activations["0"].shape == (5, 16) and activations["2"].shape == (5, 2)
assert torch.equal(gradients["2"], torch.ones(5, 2))  # d(sum)/d(output) is all ones
assert torch.equal(activations["1"], torch.relu(activations["0"]))

# A tensor hook can also modify the gradient, e.g. clamp it, on its way back.
h = torch.randn(3, requires_grad=True)
tensor_handle = h.register_hook(lambda grad: grad.clamp(-0.5, 0.5))
(h * 10).sum().backward()
assert h.grad.tolist() == [0.5, 0.5, 0.5]

for handle in handles + [tensor_handle]:
    handle.remove()
activations.clear()
net(inputs)
assert not activations  # removed hooks no longer fire
