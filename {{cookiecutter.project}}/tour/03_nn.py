"""Chapter 3: building networks with torch.nn.

Subclassing ``nn.Module``, the common layers and what they do to shapes, activations,
losses (and why ``BCEWithLogitsLoss`` beats ``Sigmoid`` + ``BCELoss``), containers, and
the difference between parameters and buffers.
"""

# %% [markdown]
# # Building Neural Networks: torch.nn
#
# `torch.nn` provides layers, activations, losses and containers. They are all
# `nn.Module` subclasses; `torch.nn.functional` (imported as `F`) holds stateless function
# versions of the same operations.

# %% [markdown]
# ## nn.Module
#
# A module owns its parameters and sub-modules. Any `nn.Module` or `nn.Parameter`
# assigned as an attribute in `__init__` is registered automatically, which is what makes
# `.parameters()`, `.to(device)`, `.train()` / `.eval()` and `.state_dict()` work.

# %% Defining a Network
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class SmallConvNet(nn.Module):
    """Classifies 1x28x28 images into ``num_classes`` classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()  # must run before any layer is assigned
        self.conv = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 14 * 14, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))  # (N, 8, 14, 14)
        return self.head(x.flatten(start_dim=1))  # (N, num_classes) logits


net = SmallConvNet()
print(net)
logits = net(torch.randn(4, 1, 28, 28))  # call the module, not .forward(): hooks run too
n_params = sum(p.numel() for p in net.parameters())
print("output shape:", tuple(logits.shape), "| parameters:", n_params)
assert logits.shape == (4, 10)
assert n_params == (8 * 1 * 3 * 3 + 8) + (8 * 14 * 14 * 10 + 10)
assert [name for name, _ in net.named_children()] == ["conv", "pool", "head"]

# %% Common Layers
batch = 4
linear = nn.Linear(in_features=20, out_features=5)
assert linear(torch.randn(batch, 20)).shape == (batch, 5)
assert linear(torch.randn(batch, 7, 20)).shape == (batch, 7, 5)  # applies to the last dim

# Convolutions: output size = floor((size + 2 * padding - kernel) / stride) + 1
conv1d = nn.Conv1d(in_channels=3, out_channels=6, kernel_size=5)  # input (N, C, length)
conv2d = nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1)  # input (N, C, H, W)
assert conv1d(torch.randn(batch, 3, 100)).shape == (batch, 6, 96)
assert conv2d(torch.randn(batch, 3, 32, 32)).shape == (batch, 16, 16, 16)

# Recurrent layers return (all outputs, final state); LSTM's state is a pair (h, c).
seq = torch.randn(batch, 12, 8)  # (N, time, features) with batch_first=True
rnn, gru = nn.RNN(8, 16, batch_first=True), nn.GRU(8, 16, batch_first=True)
lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)
out_rnn, h_rnn = rnn(seq)
out_gru, h_gru = gru(seq)
out_lstm, (h_lstm, c_lstm) = lstm(seq)
print("RNN out", tuple(out_rnn.shape), "| LSTM h", tuple(h_lstm.shape), "| LSTM c", tuple(c_lstm.shape))
assert out_rnn.shape == out_gru.shape == out_lstm.shape == (batch, 12, 16)
assert h_rnn.shape == h_gru.shape == (1, batch, 16) and h_lstm.shape == c_lstm.shape == (2, batch, 16)
assert torch.allclose(out_lstm[:, -1], h_lstm[-1])  # last output = last layer's final h

# Pooling shrinks the spatial size; max keeps the largest value, avg the mean.
patch = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
assert nn.MaxPool2d(2)(patch).item() == 4.0 and nn.AvgPool2d(2)(patch).item() == 2.5

# %% Dropout and BatchNorm2d: layers that behave differently in train and eval mode
dropout = nn.Dropout(p=0.5)
ones = torch.ones(10_000)
dropped = dropout(ones)  # modules start in training mode
zero_fraction = (dropped == 0).float().mean().item()
print(f"train mode: {zero_fraction:.3f} of the values zeroed, survivors scaled to {dropped.max().item()}")
assert 0.45 < zero_fraction < 0.55 and dropped.max().item() == 2.0  # scaled by 1 / (1 - p)
dropout.eval()
assert torch.equal(dropout(ones), ones)  # identity at evaluation time

bn = nn.BatchNorm2d(num_features=3)
images = torch.randn(16, 3, 8, 8) * 5 + 10
normalized = bn(images)
per_channel_mean = normalized.mean(dim=(0, 2, 3))
print("per-channel means after BatchNorm2d (train mode):", [f"{m:.1e}" for m in per_channel_mean.tolist()])
assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-5)
assert bn.num_batches_tracked.item() == 1 and (bn.running_mean > 0.5).all()  # running stats moved
bn.eval()  # now it uses the running statistics instead of the batch's
assert not torch.allclose(bn(images).mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-2)

# %% Activation Functions
z = torch.linspace(-3, 3, 7)
print("z      ", z.tolist())
print("relu   ", nn.ReLU()(z).tolist())
print("sigmoid", [round(v, 3) for v in nn.Sigmoid()(z).tolist()])
print("tanh   ", [round(v, 3) for v in nn.Tanh()(z).tolist()])
# Module form (for nn.Sequential) and function form (inside forward) compute the same thing.
assert torch.equal(nn.ReLU()(z), torch.relu(z)) and torch.equal(torch.relu(z), F.relu(z))
assert torch.equal(nn.Sigmoid()(z), torch.sigmoid(z)) and torch.equal(nn.Tanh()(z), torch.tanh(z))
assert torch.equal(nn.GELU()(z), F.gelu(z))

scores = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
probabilities = nn.Softmax(dim=1)(scores)  # always say which dim sums to one
print("softmax rows:", [[round(v, 3) for v in row] for row in probabilities.tolist()])
assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))
assert torch.allclose(probabilities[1], torch.full((3,), 1 / 3))

# %% Loss Functions
prediction, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0])
mse = nn.MSELoss()(prediction, target)
assert torch.isclose(mse, ((prediction - target) ** 2).mean())  # (0 + 4 + 4) / 3

# Multi-class: CrossEntropyLoss takes raw logits and integer class labels, and equals
# NLLLoss applied to log-probabilities.
logits = torch.randn(5, 4)
labels = torch.tensor([0, 3, 1, 1, 2])
ce = nn.CrossEntropyLoss()(logits, labels)
nll = nn.NLLLoss()(F.log_softmax(logits, dim=1), labels)
print(f"cross-entropy {ce.item():.4f} == NLL(log_softmax) {nll.item():.4f}")
assert torch.isclose(ce, nll)

# Binary: BCELoss wants probabilities, BCEWithLogitsLoss wants logits. The fused version
# is numerically stable: for a confident wrong logit the sigmoid rounds to exactly 1.0 in
# float32, so log(1 - p) is -inf, which BCELoss clamps to -100 (and its gradient vanishes).
logit, label = torch.tensor([40.0], requires_grad=True), torch.tensor([0.0])
bce = nn.BCELoss()(torch.sigmoid(logit), label)
bce.backward()
grad_bce = logit.grad.clone()
logit.grad = None
bce_logits = nn.BCEWithLogitsLoss()(logit, label)
bce_logits.backward()
print(
    f"BCE(sigmoid(40), 0) = {bce.item():.1f} with gradient {grad_bce.item():.1f}; "
    f"BCEWithLogits(40, 0) = {bce_logits.item():.1f} with gradient {logit.grad.item():.1f}"
)
assert bce.item() == 100.0 and grad_bce.item() == 0.0  # clamped: no signal to learn from
assert abs(bce_logits.item() - 40.0) < 1e-4 and abs(logit.grad.item() - 1.0) < 1e-6  # exact

# %% Containers
mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # forward = call in order
assert mlp(torch.randn(3, 4)).shape == (3, 2) and isinstance(mlp[1], nn.ReLU)


class Tower(nn.Module):
    def __init__(self, depth: int, use_module_list: bool):
        super().__init__()
        layers = [nn.Linear(4, 4) for _ in range(depth)]
        # A plain Python list hides the layers from nn.Module: no parameters, no .to().
        self.layers = nn.ModuleList(layers) if use_module_list else layers
        self.heads = nn.ModuleDict({"regress": nn.Linear(4, 1), "classify": nn.Linear(4, 3)})

    def forward(self, x, task: str):
        for layer in self.layers:  # a ModuleList is iterated explicitly: any control flow is OK
            x = torch.relu(layer(x))
        return self.heads[task](x)


def count(module):
    return sum(p.numel() for p in module.parameters())


good, broken = Tower(3, use_module_list=True), Tower(3, use_module_list=False)
print("parameters with ModuleList:", count(good), "| with a plain list:", count(broken))
assert count(good) == 3 * 20 + 5 + 15 and count(broken) == 5 + 15
assert good(torch.randn(2, 4), "classify").shape == (2, 3)
assert good(torch.randn(2, 4), "regress").shape == (2, 1)


# %% Parameters and Buffers
class RunningScaler(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(features))  # learned by the optimizer
        self.register_buffer("seen", torch.zeros(()))  # state, saved but not learned
        self.register_buffer("scratch", torch.zeros(features), persistent=False)  # not saved

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]
        return x * self.gain


scaler = RunningScaler(3)
scaler(torch.randn(5, 3))
print("parameters:", [n for n, _ in scaler.named_parameters()])
print("buffers:   ", [n for n, _ in scaler.named_buffers()])
print("state_dict:", list(scaler.state_dict()))
assert [n for n, _ in scaler.named_parameters()] == ["gain"]
assert sorted(n for n, _ in scaler.named_buffers()) == ["scratch", "seen"]
assert list(scaler.state_dict()) == ["gain", "seen"]  # parameters + persistent buffers
assert scaler.seen.item() == 5 and not scaler.seen.requires_grad
# BatchNorm's running statistics are buffers too: they travel in the state_dict.
assert {"running_mean", "running_var", "num_batches_tracked"} <= set(nn.BatchNorm2d(3).state_dict())
