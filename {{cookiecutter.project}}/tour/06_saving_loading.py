"""Chapter 6: saving and loading models.

Whole-model pickles versus state_dicts (and why ``torch.load`` defaults to
``weights_only=True``), then checkpoints that resume training exactly where it stopped.
Files go to ``$TOUR_OUTPUT_DIR/06_saving_loading`` (a temporary folder by default).
"""

# %% [markdown]
# # Saving and Loading Models
#
# `torch.save` writes any picklable Python object (a zip archive holding a pickle and the
# tensor data); `torch.load` reads it back. What you choose to save decides how robust
# the file is.

# %% Setup
import copy
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny tensors: one thread is faster and not slowed by busy cores
OUT = Path(os.environ.get("TOUR_OUTPUT_DIR") or tempfile.mkdtemp(prefix="tour_")) / "06_saving_loading"
OUT.mkdir(parents=True, exist_ok=True)
print("writing files to", OUT)


class Classifier(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Dropout(0.2))
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


model = Classifier().eval()
probe = torch.randn(5, 4)
reference = model(probe)

# %% Saving/Loading Entire Model
whole_path = OUT / "whole_model.pt"
torch.save(model, whole_path)  # pickles the object, including a reference to its class

# Since PyTorch 2.6 torch.load only unpickles tensors, containers and primitive types
# (weights_only=True), because unpickling an arbitrary object can run arbitrary code.
try:
    torch.load(whole_path, weights_only=True)  # the default since 2.6, spelled out
    raise AssertionError("a pickled module should not load with weights_only=True")
except pickle.UnpicklingError as err:
    reason = next(line for line in str(err).splitlines() if "Unsupported global" in line)
    print("weights_only=True refuses the pickled module:\n ", reason.strip().split(". Please")[0])
    assert "__main__.Classifier" in reason

# Opting out is only acceptable for files you trust (you wrote them yourself).
restored = torch.load(whole_path, weights_only=False)
assert isinstance(restored, Classifier) and torch.equal(restored(probe), reference)

# The pickle names the class by module and name (here __main__.Classifier): loading it
# in another program requires the same class at the same import path, which breaks as
# soon as the code is renamed, moved or refactored.
with zipfile.ZipFile(whole_path) as archive:
    pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
assert b"Classifier" in pickled
print("the pickle refers to the class by name:", b"Classifier" in pickled)

# %% [markdown]
# ## Saving/Loading State Dictionary (state_dict)
#
# The recommended format: a dictionary from names to tensors. It holds no code, so it
# loads with `weights_only=True`, and it can be loaded into any class whose parameters
# have the same names and shapes.

# %% model.state_dict()
state = model.state_dict()
for name, tensor in state.items():
    print(f"{name:<24} {tuple(tensor.shape)}")
assert list(state)[:2] == ["body.0.weight", "body.0.bias"]
assert "norm.running_mean" in state  # buffers are included (chapter 3)
assert all(isinstance(t, torch.Tensor) for t in state.values())
assert state["head.weight"].data_ptr() == model.head.weight.data_ptr()  # references, not copies!
snapshot = copy.deepcopy(state)  # take a real copy when you keep a "best model" in memory

# %% torch.save(model.state_dict(), PATH)
weights_path = OUT / "classifier_weights.pt"
torch.save(model.state_dict(), weights_path)
print(f"saved {weights_path.name}: {weights_path.stat().st_size} bytes")
assert weights_path.stat().st_size > 0

# %% model.load_state_dict(torch.load(PATH))
fresh = Classifier()  # 1. build the architecture (random weights)...
assert not torch.allclose(fresh.eval()(probe), reference)
loaded = torch.load(weights_path, map_location="cpu", weights_only=True)  # map_location: see chapter 7
result = fresh.load_state_dict(loaded)  # 2. ...then fill it
print(result)
fresh.eval()  # 3. the mode is not part of the state_dict: set it again
assert torch.equal(fresh(probe), reference)
assert not result.missing_keys and not result.unexpected_keys

# Mismatches are reported by name. strict=False tolerates missing or extra keys (useful
# for transfer learning), but never a shape mismatch.
wider = Classifier(hidden=32)
try:
    wider.load_state_dict(torch.load(weights_path, weights_only=True))
    raise AssertionError("shapes differ, loading must fail")
except RuntimeError as err:
    print("shape mismatch:", [line.strip() for line in str(err).splitlines()[1:2]])
partial = {k: v for k, v in snapshot.items() if not k.startswith("head.")}
report = Classifier().load_state_dict(partial, strict=False)
assert report.missing_keys == ["head.weight", "head.bias"]

# %% [markdown]
# ## Saving Checkpoints
#
# To resume training you need more than the weights: the optimizer's state (momentum,
# Adam's running averages), the epoch counter, the scheduler, and the random number
# generator state if anything random (dropout, shuffling) follows. The demo trains for
# six epochs in one go, and again as three epochs + checkpoint + three epochs in a
# completely new model/optimizer, and checks the two results are identical.

# %% Saving Checkpoints
data = torch.randn(256, 4)
labels = (data[:, 0] + data[:, 1] > 0).long() + (data[:, 2] > 1).long()
criterion = nn.CrossEntropyLoss()


def build(seed: int = 0):
    torch.manual_seed(seed)
    net = Classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return net, optimizer, scheduler


def run_epochs(net, optimizer, scheduler, first_epoch: int, last_epoch: int):
    net.train()
    for epoch in range(first_epoch, last_epoch):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
        for batch in order.split(32):
            optimizer.zero_grad()
            criterion(net(data[batch]), labels[batch]).backward()
            optimizer.step()
        scheduler.step()


# Uninterrupted run.
net_a, opt_a, sched_a = build()
run_epochs(net_a, opt_a, sched_a, 0, 6)

# Interrupted run: three epochs, then save everything.
net_b, opt_b, sched_b = build()
run_epochs(net_b, opt_b, sched_b, 0, 3)
checkpoint_path = OUT / "checkpoint_epoch3.pt"
torch.save(
    {
        "epoch": 3,
        "model": net_b.state_dict(),
        "optimizer": opt_b.state_dict(),
        "scheduler": sched_b.state_dict(),
        "rng": torch.get_rng_state(),
    },
    checkpoint_path,
)
del net_b, opt_b, sched_b  # pretend the process died

# A new process would start here: rebuild (different random init!), then restore.
net_c, opt_c, sched_c = build(seed=123)
checkpoint = torch.load(checkpoint_path, weights_only=True)  # fine: only tensors and numbers
net_c.load_state_dict(checkpoint["model"])
opt_c.load_state_dict(checkpoint["optimizer"])
sched_c.load_state_dict(checkpoint["scheduler"])
torch.set_rng_state(checkpoint["rng"])  # dropout masks continue from the same stream
run_epochs(net_c, opt_c, sched_c, checkpoint["epoch"], 6)

identical = all(
    torch.equal(p, q) for p, q in zip(net_a.state_dict().values(), net_c.state_dict().values(), strict=True)
)
print("resumed training equals uninterrupted training:", identical)
assert identical

# Skipping the optimizer state is a common bug: Adam restarts with empty statistics and
# the result drifts away from the uninterrupted run.
net_d, opt_d, sched_d = build(seed=123)
net_d.load_state_dict(checkpoint["model"])
sched_d.load_state_dict(checkpoint["scheduler"])
torch.set_rng_state(checkpoint["rng"])
run_epochs(net_d, opt_d, sched_d, 3, 6)
drift = (net_d.head.weight - net_a.head.weight).abs().max().item()
print(f"without the optimizer state the weights differ by up to {drift:.4f}")
assert drift > 1e-4
