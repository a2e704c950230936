"""Chapter 5: the training workflow.

The five steps of a training loop, one at a time and then together in about twenty lines;
SGD, Adam and RMSprop on the same problem; a learning-rate scheduler; and the evaluation
loop. The last cell points to the project's two engines, which are this loop grown up.
"""

# %% [markdown]
# # Model Training Workflow
#
# Training repeats one recipe: predict, measure the error, compute gradients, update the
# weights, clear the gradients. The problem here is a small two-class dataset (points
# inside or outside a circle) made on the spot, so every run takes a second.

# %% Data and model for this chapter
import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny tensors: one thread is faster and not slowed by busy cores


def make_circles(n: int, generator: torch.Generator):
    points = torch.rand(n, 2, generator=generator) * 4 - 2  # uniform in [-2, 2]^2
    labels = (points.norm(dim=1) < 1.2).long()  # class 1 inside the circle
    return points, labels


gen = torch.Generator().manual_seed(0)
train_set = TensorDataset(*make_circles(1024, gen))
val_set = TensorDataset(*make_circles(512, gen))
print("class balance in training data:", train_set.tensors[1].float().mean().item())


def make_model():
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


model = make_model()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
inputs, targets = train_set.tensors[0][:64], train_set.tensors[1][:64]

# %% [markdown]
# ## The Training Loop
#
# The next five cells run each step once on a single batch, so you can inspect what each
# one changes. The cell after them puts the steps in the usual order.

# %% Forward Pass
output = model(inputs)  # logits, one row per sample
print("output:", tuple(output.shape), "| graph recorded:", output.grad_fn is not None)
assert output.shape == (64, 2) and output.requires_grad

# %% Loss Calculation
loss = criterion(output, targets)  # a 0-d tensor: the mean over the batch
print(f"loss: {loss.item():.4f} (chance level for 2 classes is ln 2 = 0.6931)")
assert loss.ndim == 0 and 0.3 < loss.item() < 1.5

# %% Backward Pass
assert all(p.grad is None for p in model.parameters())
loss.backward()  # fills p.grad for every parameter that contributed to the loss
grad_norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
print(f"gradient norm: {grad_norm.item():.4f}")
assert all(p.grad is not None for p in model.parameters())

# %% Optimizer Step
before = [p.detach().clone() for p in model.parameters()]
optimizer.step()  # plain SGD: p <- p - lr * p.grad
for old, p in zip(before, model.parameters(), strict=True):
    assert torch.allclose(p.detach(), old - 0.1 * p.grad)
with torch.no_grad():
    new_loss = criterion(model(inputs), targets).item()
print(f"loss on the same batch after one step: {new_loss:.4f} (was {loss.item():.4f})")
assert new_loss < loss.item()

# %% Zeroing Gradients
optimizer.zero_grad()  # sets every .grad to None, ready for the next batch
assert all(p.grad is None for p in model.parameters())
# Forgetting this step makes each .grad the sum over all previous batches.
criterion(model(inputs), targets).backward()
first = model[0].weight.grad.clone()
criterion(model(inputs), targets).backward()
assert torch.allclose(model[0].weight.grad, 2 * first)
optimizer.zero_grad()


# %% The Training Loop
def train(model, optimizer, epochs: int, scheduler=None, seed: int = 0):
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    history = []
    for _ in range(epochs):
        model.train()  # training-mode behaviour for dropout / batch norm
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()  # 5. (done first) clear old gradients
            output = model(xb)  # 1. forward pass
            loss = criterion(output, yb)  # 2. loss
            loss.backward()  # 3. backward pass
            optimizer.step()  # 4. update
            total += loss.item() * len(xb)
        if scheduler is not None:
            scheduler.step()  # once per epoch, after the optimizer steps
        history.append(total / len(train_set))
    return history


model = make_model()
history = train(model, torch.optim.Adam(model.parameters(), lr=1e-2), epochs=15)
print("loss per epoch:", [round(v, 3) for v in history])
assert history[-1] < 0.25 * history[0]

# %% [markdown]
# ## Optimization Algorithms (torch.optim)
#
# An optimizer receives the parameters to update and applies a rule to their `.grad`.
# SGD uses the gradient (plus optional momentum); Adam and RMSprop also divide by a
# running estimate of each gradient's magnitude, which gives every parameter its own
# effective step size.

# %% Common Optimizers
torch.manual_seed(1)
start = make_model()  # every optimizer starts from the same weights
candidates = {
    "SGD (momentum 0.9)": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "Adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "RMSprop": lambda params: torch.optim.RMSprop(params, lr=1e-3),
}
final_losses = {}
for name, make_optimizer in candidates.items():
    net = copy.deepcopy(start)
    curve = train(net, make_optimizer(net.parameters()), epochs=8)
    final_losses[name] = curve[-1]
    print(f"{name:>20}: {' '.join(f'{v:.3f}' for v in curve)}")
assert all(loss < 0.45 for loss in final_losses.values()), final_losses

# %% Learning Rate Scheduling
net = make_model()
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)  # halve every 3 epochs
lrs = []
for _ in range(9):
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()  # (a real epoch of training would happen here)
    step_lr.step()
print("StepLR learning rates:", lrs)
assert lrs == [0.1] * 3 + [0.05] * 3 + [0.025] * 3

net = make_model()
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
curve = train(net, opt, epochs=10, scheduler=cosine)
print("with cosine annealing:", [round(v, 3) for v in curve], "| final lr", opt.param_groups[0]["lr"])
assert opt.param_groups[0]["lr"] < 1e-6 and curve[-1] < curve[0]


# %% Evaluation Loop
@torch.no_grad()  # no graph is recorded: less memory, faster
def evaluate(model, dataset):
    model.eval()  # evaluation-mode behaviour for dropout / batch norm
    correct, total_loss = 0, 0.0
    for xb, yb in DataLoader(dataset, batch_size=256):
        logits = model(xb)
        total_loss += criterion(logits, yb).item() * len(xb)
        correct += (logits.argmax(dim=1) == yb).sum().item()
    model.train()
    return total_loss / len(dataset), correct / len(dataset)


val_loss, val_acc = evaluate(model, val_set)  # the Adam model trained above
print(f"validation loss {val_loss:.4f}, accuracy {100 * val_acc:.1f} percent")
assert val_acc > 0.9
assert not evaluate(make_model(), val_set)[1] > 0.9  # an untrained model is far from that

# %% [markdown]
# ## From this loop to the project's engines: a ladder of four rungs
#
# This chapter's `train` is where the ladder starts: the five steps and nothing else. The
# project trains its one task on four rungs, each taking more off your hands, all four to
# the same numbers (`python compare.py` trains them side by side):
#
# 1. `src/{{ cookiecutter.package }}/engines/minimal.py` (`python train.py engine=minimal`):
#    this loop on the project's data, model, optimizer and schedule
#    (`src/{{ cookiecutter.package }}/core/task.py`), plus a validation pass per epoch, the best
#    and last checkpoints and TensorBoard scalars; the benchmark's floor.
# 2. `src/{{ cookiecutter.package }}/engines/fabric.py` (`engine=fabric`): the same loop under
#    Lightning Fabric, which takes devices, precision, DDP and checkpoint files off your hands;
#    `diff` it with minimal.py to see Fabric's changes and nothing else.
# 3. `src/{{ cookiecutter.package }}/engines/raw.py` (`engine=raw`): everything
#    `lightning.Trainer` does, by hand, in Lightning's names. Its `optimizer_step` holds the five
#    steps of this chapter together; `fit` and the functions it calls (`fit_loop`,
#    `train_epoch`, `validation_loop`, ...) add accumulation, clipping, validation cadence,
#    early stopping, exact resume, logging, signals and DDP.
# 4. `src/{{ cookiecutter.package }}/engines/lightning.py` (`engine=lightning`): the Trainer
#    doing all of it: you write `training_step` and `configure_optimizers`.
#
# raw.py and lightning.py carry the same section markers; open them side by side.
# COMPARISON.md walks the four rungs concern by concern (device, precision, data, ...).
