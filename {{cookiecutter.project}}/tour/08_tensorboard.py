"""Chapter 8: visualization and monitoring.

TensorBoard via ``torch.utils.tensorboard.SummaryWriter`` (scalars, images, histograms and
the model graph, read back to check they were written) and a matplotlib figure saved as
a PNG. Output goes to ``$TOUR_OUTPUT_DIR/08_tensorboard`` (a temporary folder by default);
view it with ``tensorboard --logdir <that folder>``.
"""

# %% [markdown]
# # Visualization and Monitoring
#
# Two tools cover most needs: TensorBoard for live curves and model internals during
# training, and matplotlib for figures of data and results. The project's Lightning and
# raw engines both log to TensorBoard (`logs/` by default), so the same viewer works
# for the tour and for real runs.

# %% Setup
import os
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw to files only: no window, works on servers and in CI
import matplotlib.pyplot as plt
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny tensors: one thread is faster and not slowed by busy cores
OUT = Path(os.environ.get("TOUR_OUTPUT_DIR") or tempfile.mkdtemp(prefix="tour_")) / "08_tensorboard"
OUT.mkdir(parents=True, exist_ok=True)

# A regression problem and a small network to have something worth plotting.
x = torch.linspace(-3, 3, 200).unsqueeze(1)
y = torch.sin(x) + 0.1 * torch.randn_like(x)
model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

# %% TensorBoard Integration
log_dir = OUT / "runs" / "sine"
writer = SummaryWriter(log_dir=str(log_dir))  # one folder per run; TensorBoard compares runs

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # add_graph still uses the deprecated jit tracer
    writer.add_graph(model, x[:4])  # traces one forward pass to draw the module graph

losses = []
for step in range(150):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    writer.add_scalar("loss/train", loss.item(), global_step=step)  # tag, value, x-axis
    if step % 50 == 0:
        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], global_step=step)
        for name, param in model.named_parameters():  # watch weights and gradients evolve
            writer.add_histogram(f"weights/{name}", param, global_step=step)
            writer.add_histogram(f"grads/{name}", param.grad, global_step=step)

# Images are (N, C, H, W) floats in [0, 1] (or uint8). Here: the first layer's responses
# to the inputs, one row per hidden unit, as a grayscale image.
with torch.no_grad():
    activations = torch.tanh(model[0](x)).T  # (32 hidden units, 200 inputs)
picture = ((activations + 1) / 2).unsqueeze(0).unsqueeze(0)  # (1, 1, 32, 200)
writer.add_images("hidden_units", picture, global_step=150)
writer.add_text("notes", "Adam, lr 0.02, 150 full-batch steps on a noisy sine", global_step=0)
writer.close()  # flushes the event file to disk

print(f"final training loss: {losses[-1]:.4f}")
print("event files:", [p.name for p in log_dir.glob("events.out.tfevents.*")])
print(f"view them with:  tensorboard --logdir {OUT / 'runs'}")
assert losses[-1] < 0.05

# %% Reading the event file back
# TensorBoard's own reader confirms what was written (handy in tests of logging code).
events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
events.Reload()
tags = events.Tags()
print("scalars:", tags["scalars"])
print("histograms:", len(tags["histograms"]), "| images:", tags["images"], "| graph:", tags["graph"])
scalar_events = events.Scalars("loss/train")
assert len(scalar_events) == 150 and scalar_events[-1].step == 149
assert abs(scalar_events[-1].value - losses[-1]) < 1e-6
assert "weights/0.weight" in tags["histograms"] and "grads/2.bias" in tags["histograms"]
assert tags["images"] == ["hidden_units"] and tags["graph"] is True

# %% Plotting Libraries
figure, (ax_fit, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.5))
with torch.no_grad():
    fitted = model(x)
ax_fit.scatter(x.squeeze(), y.squeeze(), s=6, alpha=0.5, label="noisy data")
ax_fit.plot(x.squeeze(), torch.sin(x).squeeze(), "k--", linewidth=1, label="sin(x)")
ax_fit.plot(x.squeeze(), fitted.squeeze(), "r", label="network")
ax_fit.set_title("fit")
ax_fit.legend()
ax_loss.plot(losses)
ax_loss.set_yscale("log")
ax_loss.set_xlabel("step")
ax_loss.set_title("training loss (MSE)")
figure.subplots_adjust(left=0.07, right=0.98, bottom=0.15, wspace=0.25)

png_path = OUT / "sine_fit.png"
figure.savefig(png_path, dpi=80)
plt.close(figure)  # free the figure; pyplot keeps references to open ones
print("saved", png_path, f"({png_path.stat().st_size} bytes)")
assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

# The same figure can go to TensorBoard as well: writer.add_figure("fit", figure).
