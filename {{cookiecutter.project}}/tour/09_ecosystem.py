"""Chapter 9: the PyTorch ecosystem.

torchvision models and transforms (no weight download), exporting a model for deployment
(ONNX when the exporter's packages are installed, ``torch.export`` always), a one-process
``torch.distributed`` group on the CPU, and short tours of probabilistic programming,
reinforcement learning and high-level training APIs. Files go to
``$TOUR_OUTPUT_DIR/09_ecosystem`` (a temporary folder by default).
"""

# %% [markdown]
# # The PyTorch Ecosystem
#
# Core PyTorch stays small on purpose; domain libraries, deployment tools, distributed
# training helpers and high-level trainers live in separate packages built on it.

# %% Setup
import importlib.util
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torchvision.transforms import v2

torch.manual_seed(0)
OUT = Path(os.environ.get("TOUR_OUTPUT_DIR") or tempfile.mkdtemp(prefix="tour_")) / "09_ecosystem"
OUT.mkdir(parents=True, exist_ok=True)

# %% Domain Libraries
# torchvision (images and video), torchaudio (audio); torchtext is no longer developed,
# text models now mostly come from Hugging Face transformers. Each library offers
# datasets, model architectures (with optional pretrained weights) and transforms.
print(
    "torchvision",
    torchvision.__version__,
    "| torchaudio installed:",
    importlib.util.find_spec("torchaudio") is not None,
)

names = torchvision.models.list_models(module=torchvision.models)
print(f"{len(names)} classification architectures, e.g.", names[:4])
assert "resnet18" in names

# weights=None builds the architecture with random weights: nothing is downloaded.
resnet = torchvision.models.resnet18(weights=None, num_classes=5).eval()
with torch.no_grad():
    logits = resnet(torch.randn(2, 3, 64, 64))
n_params = sum(p.numel() for p in resnet.parameters())
print(f"resnet18 with a 5-class head: {n_params:,} parameters, output {tuple(logits.shape)}")
assert logits.shape == (2, 5)
assert isinstance(resnet.fc, nn.Linear) and resnet.fc.in_features == 512

# The weights enum describes pretrained checkpoints (and their preprocessing) without
# downloading them; passing weights=... to resnet18 is what triggers the download.
weights = torchvision.models.ResNet18_Weights.DEFAULT
print("pretrained option:", weights, "| categories:", len(weights.meta["categories"]))
preprocess = weights.transforms()  # the exact resize/crop/normalize used in training
image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
assert preprocess(image).shape == (3, 224, 224)

# Fine-tuning recipe: freeze the backbone, replace the head for your classes.
for param in resnet.parameters():
    param.requires_grad_(False)
resnet.fc = nn.Linear(512, 3)  # new layers require grad by default
trainable = [name for name, p in resnet.named_parameters() if p.requires_grad]
assert trainable == ["fc.weight", "fc.bias"]

augment = v2.Compose(
    [  # torchvision transforms, as in chapter 4
        v2.RandomCrop(48),
        v2.ColorJitter(brightness=0.3),
        v2.ToDtype(torch.float32, scale=True),
    ]
)
assert augment(image[:, :64, :64]).shape == (3, 48, 48)

# %% Production Deployment
# Ways to ship a trained model:
# * torch.export -> an ExportedProgram: a graph of ATen ops plus the weights, saved as a
#   .pt2 file, loadable without your model's Python code, the entry point for
#   AOTInductor (compiled C++ deployment) and ExecuTorch (mobile, edge).
# * ONNX -> run in ONNX Runtime, TensorRT, OpenVINO, browsers... (torch.onnx.export needs
#   the onnx and onnxscript packages).
# * Serving: TorchServe (now in limited maintenance), NVIDIA Triton, LitServe, or a plain web
#   app (FastAPI on uvicorn).
# bake: if cookiecutter.include_deployment
# This project does all three with a trained checkpoint of either engine:
#   python export.py ckpt_path=last format=all   # model.pt2 + model.onnx + model.json, each
#                                                # checked against the PyTorch model first
#   python predict.py model_path=logs/export/<run>/model.pt2 inputs=<image|folder|.npy>
#   python serve.py model_path=logs/export/<run>/model.onnx   # HTTP: POST /predict, GET /health
# (src/{{ cookiecutter.package }}/workflows/exporting.py, prediction.py, serving.py; the README's
# "From checkpoint to production").
# bake: endif
# Below, the same two exports of a tiny model, by hand.
small = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
example = (torch.randn(3, 4),)
batch = torch.export.Dim("batch")  # the first dimension may vary at run time
exported = torch.export.export(small, example, dynamic_shapes=({0: batch},))
pt2_path = OUT / "small.pt2"
torch.export.save(exported, pt2_path)
reloaded = torch.export.load(pt2_path).module()
new_input = torch.randn(7, 4)  # a batch size the export never saw
assert torch.allclose(reloaded(new_input), small(new_input))
print(f"torch.export: saved {pt2_path.name} ({pt2_path.stat().st_size} bytes); reloaded output matches")
print(
    "ops in the exported graph:",
    sorted({str(node.target) for node in exported.graph.nodes if node.op == "call_function"}),
)

if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxscript"):
    onnx_path = OUT / "small.onnx"
    torch.onnx.export(small, example, str(onnx_path), dynamo=True, dynamic_shapes=({0: batch},))
    import onnx  # only reached when installed

    onnx.checker.check_model(str(onnx_path))
    print("ONNX: wrote and checked", onnx_path.name)
else:
    print(
        "ONNX export skipped: install the onnx and onnxscript packages to try it "
        "(pip install onnx onnxscript, plus onnxruntime to run the file)"
    )

# %% Distributed Training
# torch.distributed gives processes a communication group (backends: nccl for NVIDIA
# GPUs, gloo for CPUs, ...) and collective operations on tensors. DDP, FSDP and
# Lightning's strategies are built on it. Normally `torchrun` starts one process per
# device; here a group of ONE process is enough to run the calls. A file-based rendezvous
# avoids opening any network port.
if dist.is_available() and dist.is_gloo_available():
    store_file = OUT / "dist_store"
    store_file.unlink(missing_ok=True)  # the rendezvous file must not exist beforehand
    dist.init_process_group("gloo", init_method=store_file.as_uri(), rank=0, world_size=1)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        grads = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)  # each rank would hold different values
        dist.all_reduce(grads, op=dist.ReduceOp.SUM)  # ...and all end up with the same sum
        grads /= world  # = the average that DDP applies to gradients
        print(f"rank {rank} of {world}: all_reduce result {grads.tolist()}")
        assert grads.tolist() == [1.0, 2.0, 3.0]
        flag = torch.tensor([0])
        dist.broadcast(flag.add_(7), src=0)  # rank 0's value wins everywhere
        assert flag.item() == 7
    finally:
        dist.destroy_process_group()
else:
    print("this PyTorch build has no torch.distributed/gloo support; skipping the demo")

# %% Probabilistic Programming
# Pyro (and NumPyro, its JAX sibling) build probabilistic models and variational inference
# on top of torch.distributions, which ships with PyTorch: distributions with sampling,
# log-densities, and reparameterized samples that gradients flow through.
from torch.distributions import Categorical, Normal

loc = torch.tensor(1.0, requires_grad=True)
prior = Normal(loc, 2.0)
samples = prior.rsample((20_000,))  # loc + 2 * noise: differentiable in loc
samples.pow(2).mean().backward()  # E[x^2] = loc^2 + 4, so d/dloc = 2 * loc = 2
print(f"reparameterized gradient estimate: {loc.grad.item():.3f} (exact: 2)")
assert abs(loc.grad.item() - 2.0) < 0.15
log_density = Normal(0.0, 1.0).log_prob(torch.tensor(0.0))  # log of 1 / sqrt(2 pi)
assert abs(log_density.item() + 0.5 * math.log(2 * math.pi)) < 1e-6

# %% Reinforcement Learning
# TorchRL (from the PyTorch team), Stable-Baselines3 and CleanRL implement agents on top
# of PyTorch, usually with Gymnasium environments. Their core is what this cell does by
# hand: a policy network outputs a distribution, and the policy gradient (REINFORCE)
# raises the log-probability of actions in proportion to their reward.
true_rewards = torch.tensor([0.2, 0.5, 0.9])  # a 3-armed bandit; arm 2 pays best
policy_logits = torch.zeros(3, requires_grad=True)
optimizer = torch.optim.Adam([policy_logits], lr=0.1)
for _ in range(100):
    policy = Categorical(logits=policy_logits)
    actions = policy.sample((64,))
    rewards = torch.bernoulli(true_rewards[actions])
    advantage = rewards - rewards.mean()  # a baseline lowers the variance
    loss = -(policy.log_prob(actions) * advantage).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
probabilities = torch.softmax(policy_logits.detach(), dim=0)
print("learned policy:", [round(p, 3) for p in probabilities.tolist()])
assert probabilities.argmax().item() == 2 and probabilities[2] > 0.8

# %% High-Level APIs
# Libraries that write more of the training loop for you. This project trains one task on a
# ladder of four rungs, to the same numbers on each (`python compare.py` trains them side by
# side; COMPARISON.md walks them concern by concern). Each rung takes more off your hands:
# * tour/05_training_loop.py, `train`: the five steps on toy data; you write everything.
# * engines/minimal.py (`engine=minimal`): that loop on the project's data, model, optimizer
#   and schedule, with validation, best/last checkpoints and TensorBoard scalars. Still yours:
#   devices, precision, DDP, and every edge case.
# * engines/fabric.py (`engine=fabric`): the same loop under Lightning Fabric. `Fabric(...)`,
#   `fabric.setup` and `fabric.backward` take the devices, precision and DDP, `fabric.save` /
#   `fabric.load` the checkpoint files, `fabric.is_global_zero` the rank-zero work; the loop
#   stays yours, line for line (the diff below).
# * engines/raw.py (`engine=raw`): what Lightning's Trainer does, written out by hand in its
#   names: accumulation, clipping, validation cadence, early stopping, exact mid-epoch resume,
#   signals, loggers, profiling.
# * engines/lightning.py (`engine=lightning`): the Trainer doing all of that. You write
#   `training_step` and `configure_optimizers`; the loop is no longer yours.
# fastai sits one rung above Lightning: a `Learner` with callbacks and data blocks, and
# opinionated defaults (one-cycle schedule, learning-rate finder); this project does not use it.
# (Hugging Face Accelerate is about Fabric's rung; its Trainer, PyTorch Ignite and Composer
# are other takes on the Trainer's.) The cell reads the real files: how long each rung is, and
# what `diff minimal.py fabric.py` changes. Importing lightning takes seconds: it only checks it.
import difflib
import io
import re
import tokenize

ENGINES = Path(__file__).resolve().parents[1] / "src" / "{{ cookiecutter.package }}" / "engines"


def code_lines(path: Path) -> int:
    """Lines that are not blank and not only a comment (docstrings count)."""
    lines = set()
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type not in skipped:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines)


ladder = {
    "minimal.py": "your loop on the project's task",
    "fabric.py": "+ devices, precision, DDP, checkpoint files (Fabric)",
    "raw.py": "+ everything the Trainer does, by hand",
    "lightning.py": "the Trainer does it (+ lightning_parity.py's callbacks)",
}
for name, what in ladder.items():
    print(f"engines/{name:<13} {code_lines(ENGINES / name):4d} lines: {what}")
minimal, fabric = ((ENGINES / name).read_text().splitlines() for name in ("minimal.py", "fabric.py"))
diff = list(difflib.unified_diff(minimal, fabric, "minimal.py", "fabric.py", n=0, lineterm=""))
removed = [line for line in diff[2:] if line.startswith("-")]
added = [line for line in diff[2:] if line.startswith("+")]
hunks = [line for line in diff if line.startswith("@@")]
print(f"diff minimal.py fabric.py: {len(hunks)} hunks, -{len(removed)} +{len(added)} lines of {len(minimal)}")
print(
    "  what the added lines call:",
    ", ".join(sorted({call for line in added for call in re.findall(r"\bfabric\.(?!py\b)\w+", line)})),
)
assert hunks and len(removed) + len(added) < len(minimal)  # a conversion, not a rewrite
print("lightning installed:", importlib.util.find_spec("lightning") is not None)
