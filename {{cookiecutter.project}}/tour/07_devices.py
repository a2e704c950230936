"""Chapter 7: hardware acceleration.

Checking which devices exist, moving tensors and models with ``.to(device)``, the
device-mismatch error, Apple's MPS backend, and multi-GPU training with DataParallel and
DistributedDataParallel. Runs everywhere: cells that need a GPU explain what they would
show when none is present.
"""

# %% [markdown]
# # Hardware Acceleration (GPU/TPU/MPS)
#
# Every tensor lives on one device. Operations run where their inputs live, and all
# inputs of one operation must live on the same device. Device names: `cpu`, `cuda`
# (NVIDIA, and AMD through ROCm builds), `mps` (Apple silicon), `xpu` (Intel GPUs);
# TPUs are reached through the separate `torch_xla` package.

# %% Checking for GPU Availability
import io

import torch
from torch import nn

torch.manual_seed(0)

print("CUDA build:", torch.version.cuda, "| ROCm/HIP build:", torch.version.hip)
print("torch.cuda.is_available():", torch.cuda.is_available(), "| device count:", torch.cuda.device_count())
for index in range(torch.cuda.device_count()):
    props = torch.cuda.get_device_properties(index)
    print(f"  cuda:{index} = {props.name}, {props.total_memory / 2**30:.1f} GiB")
print("MPS built:", torch.backends.mps.is_built(), "| available:", torch.backends.mps.is_available())
print("CPU threads used by torch:", torch.get_num_threads())


def pick_device() -> torch.device:
    """The usual one-liner, written out: prefer CUDA, then MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


device = pick_device()
print("selected device:", device)
# Newer releases also offer a backend-neutral API for the same question.
accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
print("torch.accelerator reports:", accelerator)
if device.type != "cpu":
    assert accelerator is not None and accelerator.type == device.type

# %% Moving Tensors to Device
x = torch.randn(3, 3)
x_dev = x.to(device)  # a copy on the device (or x itself if it is already there)
print("x on", x.device, "| x_dev on", x_dev.device)
assert x_dev.device.type == device.type
assert x.to("cpu") is x  # no-op moves return the same object, no copy
y = torch.zeros(3, device=device)  # better still: create tensors where they are needed
assert y.device.type == device.type
if torch.cuda.is_available():
    assert x.cuda().device.type == "cuda"  # .cuda() is the older spelling of .to("cuda")
    pinned = x.pin_memory()  # page-locked memory allows an asynchronous copy
    assert pinned.to(device, non_blocking=True).device.type == "cuda"
back_on_cpu = x_dev.cpu()  # results must come back to the CPU for NumPy or printing
assert torch.equal(back_on_cpu, x)

# %% Moving Models to Device
model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
returned = model.to(device)  # modules move IN PLACE (parameters and buffers)...
assert returned is model  # ...and return themselves, so model = model.to(device) also works
assert all(p.device.type == device.type for p in model.parameters())

batch = torch.randn(4, 3)
prediction = model(batch.to(device))  # the data must follow the model
assert prediction.device.type == device.type
# Checkpoints remember the device their tensors were on. map_location moves them while
# loading, so a file saved on a GPU machine loads on a laptop without CUDA.
buffer = io.BytesIO()
torch.save(model.state_dict(), buffer)
buffer.seek(0)
state = torch.load(buffer, map_location="cpu", weights_only=True)
assert all(t.device.type == "cpu" for t in state.values())

# Build the optimizer AFTER model.to(device): torch.optim.Adam(model.parameters()) then
# holds the parameters that live on the device, and creates its state there too.

# %% The device-mismatch error
# Mixing devices in one operation raises an error rather than copying behind your back.
# With a GPU the message reads "Expected all tensors to be on the same device, but found
# at least two devices, cuda:0 and cpu!". On a CPU-only machine there is no second real
# device, so the cell falls back to the "meta" device (tensors with a shape but no
# data), which trips the same device check.
other = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "meta"
cpu_model = nn.Linear(3, 1)
try:
    cpu_model(torch.randn(2, 3, device=other))
    raise AssertionError("mixing devices must fail")
except RuntimeError as err:
    print(f"cpu model, {other} input ->", str(err).splitlines()[0])
    assert "device" in str(err)
if other == "meta":
    print("(no GPU here: the real cuda/cpu version of this message needs a second device)")

# %% Apple Silicon (MPS) Backend
# torch.device("mps") runs on the GPU of Apple silicon Macs via Metal. Two practical
# notes: float64 is not supported there (use float32), and operators that are not
# implemented yet can fall back to the CPU if PYTORCH_ENABLE_MPS_FALLBACK=1 is set
# before torch is imported.
if torch.backends.mps.is_available():
    z = torch.ones(2, device="mps") * 3
    assert z.device.type == "mps" and z.cpu().tolist() == [3.0, 3.0]
    print("MPS works:", z)
else:
    reason = "this build has no MPS support" if not torch.backends.mps.is_built() else "no Apple GPU found"
    print("MPS not available here:", reason)

# %% Multiple GPUs (nn.DataParallel, DistributedDataParallel)
# nn.DataParallel: one process; each forward splits the batch across the visible GPUs,
# copies the model to each of them, and gathers the outputs on the first GPU. A one-line
# change, but the per-step replication and the Python GIL make it slow; the PyTorch docs
# recommend DistributedDataParallel instead, even on a single machine.
#
# DistributedDataParallel (DDP): one process per GPU, each with its own model copy and its
# own shard of the data (DistributedSampler); gradients are averaged with an all-reduce
# during backward. Faster, and it scales to many machines. It needs a launcher such as
# `torchrun --nproc-per-node=4 script.py`, or Lightning's `Trainer(strategy="ddp")`. This
# project does both: `python train.py engine=raw trainer=ddp_cpu` (two CPU processes) or
# `trainer=ddp` (GPUs), with the same numbers in both engines (README: Distributed training;
# the raw loop's DDP lines are in engines/raw.py, the launcher in distributed.py).
# Chapter 9 runs a tiny torch.distributed group on the CPU to show the all-reduce.
wrapped = nn.DataParallel(nn.Linear(3, 2))
out = wrapped(torch.randn(4, 3))  # with zero or one GPU it simply calls the module
assert out.shape == (4, 2)
# A wrapped model's state_dict keys gain a "module." prefix (DDP does the same): save
# wrapped.module.state_dict() to keep checkpoints loadable without the wrapper.
print("state_dict keys of a wrapped model:", list(wrapped.state_dict()))
assert list(wrapped.state_dict()) == ["module.weight", "module.bias"]
assert list(wrapped.module.state_dict()) == ["weight", "bias"]
