"""What the engines cost on top of a bare PyTorch loop: python benchmarks/engine_overhead.py [--repeats 3]

Three trainers do the same training (digits, the default cnn, batch size, optimizer, OneCycleLR and seed of
configs/, so the same losses step for step):

  bare       the minimum: forward, loss, backward, step, zero_grad, scheduler step, and a validation pass
             (loss and accuracy) at the end of every epoch; no logging, checkpoints, progress bar or checks
  raw        python train.py engine=raw
  lightning  python train.py engine=lightning

Every run is its own process, run in turn (bare, raw, lightning, bare, raw, ...) so that a slower period of the
machine hits all three alike; the figures are medians over --repeats. Printed:

* time per epoch: training + the validation pass, as metrics.json epoch_times_s measures it in both engines
  (checkpoint writes after validation are outside it in both); the median epoch of each run, then the median
  over the repeats of the ratios raw/bare and lightning/raw, each ratio taken within one repeat;
* start-up: from the process start to the first training step (metrics.json startup_s; the same clock in the
  bare loop), and what the imports cost (python -X importtime);
* time to accuracy: the training time (sum of epoch times, start-up excluded) up to the end of the first
  epoch after which the test-set accuracy of the weights is >= --target. The engines evaluate the test set only
  once, at the end, so the accuracy per epoch comes from separate untimed runs that keep each epoch's weights
  as the engine writes last.ckpt (the bare loop: at the end of each epoch) and evaluate them all on the test set
  with one evaluation function.

Each process uses one torch thread (--threads 1, OMP_NUM_THREADS) unless told otherwise: this model is too small
to gain from a second thread, and on a machine with any other load two OpenMP threads that wait for each other
made epochs 10 to 40 times slower, and erratic (measured on a busy 2-core machine: 0.3 s per epoch with one
thread, 3 to 13 s with two).
"""

import time

STARTED = time.perf_counter()  # the bare loop's start-up is timed from here, as train.py times the engines'

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from datetime import datetime  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ("bare", "raw", "lightning")
# The training every trainer does: the bundled data and the default model whatever the template's default
# dataset is; no progress bar (it would only write to a pipe).
OVERRIDES = ["data=digits", "model=cnn", "trainer.enable_progress_bar=false"]
# Modules whose import time is reported, by the name python -X importtime prints. torchvision comes in with
# torchmetrics (torchmetrics.functional.image), which both engines use for the accuracy.
IMPORTS = ("torch", "torchmetrics", "torchvision", "torch.utils.tensorboard", "hydra", "lightning")
TARGETS = {"raw / bare": 1.05, "lightning / raw": 1.10}  # per-epoch time, on CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each trainer (default: 3)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per run (default: 20, as configs/trainer)")
    parser.add_argument("--target", type=float, default=0.97, help="test accuracy for time-to-accuracy (0.97)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process, OMP_NUM_THREADS (default: 1, see below; 0: torch's choice)")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)  # one run, internal
    args = parser.parse_args()
    if args.repeats < 1 or args.epochs < 1 or not 0 < args.target <= 1:
        parser.error("--repeats and --epochs must be at least 1 and --target in (0, 1]")
    if args.worker:
        worker(*args.worker, epochs=args.epochs)
        return

    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    print(environment(args))
    with tempfile.TemporaryDirectory(prefix="engine_overhead_") as scratch:
        runs = {trainer: [] for trainer in TRAINERS}  # per trainer: one metrics dict per repeat
        for repeat in range(args.repeats):
            for trainer in TRAINERS:
                out = Path(scratch) / f"{trainer}_{repeat}"
                print(f"run {repeat + 1}/{args.repeats}: {trainer:<9}", end=" ", flush=True)
                runs[trainer].append(timed_run(trainer, out, args.epochs, env))
                print(f"median epoch {statistics.median(runs[trainer][-1]['epoch_times_s']):.3f} s, "
                      f"start-up {runs[trainer][-1]['startup_s']:.2f} s", flush=True)
        print("accuracy per epoch (untimed runs that keep each epoch's weights) ...", flush=True)
        test_accuracy = {trainer: accuracy_run(trainer, Path(scratch) / f"{trainer}_accuracy", args.epochs, env)
                         for trainer in TRAINERS}
    print("import times (python -X importtime) ...", flush=True)
    imports = import_times(args.repeats, env)
    print()
    print(report(runs, test_accuracy, imports, args.target))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def environment(args: argparse.Namespace) -> str:
    import torch  # only for its version and thread count

    threads = args.threads or torch.get_num_threads()
    return (f"{datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} (threads: {threads}), lightning {version('lightning')}, "
            f"python {platform.python_version()}; load average before: "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
            f"{args.repeats} repeats x {len(TRAINERS)} trainers x {args.epochs} epochs, interleaved")


def run(name: str, command: list[str], log: Path, env: dict[str, str]) -> None:
    """Run `command` with its output in `log`; a failure stops the benchmark with the run's last lines."""
    with log.open("w") as output:
        result = subprocess.run(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = "\n".join(f"    {line}" for line in log.read_text().splitlines()[-15:])
        sys.exit(f"failed\n{tail}\nerror: the {name} run failed with exit code {result.returncode} (its last lines "
                 "are above)")


def timed_run(trainer: str, out: Path, epochs: int, env: dict[str, str]) -> dict:
    """One run in its own process; returns its metrics (epoch_times_s, startup_s)."""
    from {{ cookiecutter.package }}.comparison import hydra_quoted

    out.mkdir(parents=True)
    if trainer == "bare":
        command = [sys.executable, __file__, "--epochs", str(epochs), "--worker", "bare", str(out / "metrics.json")]
    else:
        command = [sys.executable, "train.py", f"engine={trainer}", *OVERRIDES, f"trainer.max_epochs={epochs}",
                   f"hydra.run.dir={hydra_quoted(str(out))}"]
    run(trainer, command, out.with_suffix(".log"), env)
    return json.loads((out / "metrics.json").read_text())


def accuracy_run(trainer: str, out: Path, epochs: int, env: dict[str, str]) -> list[float]:
    """Test accuracy after each epoch, from an untimed run of `trainer` that keeps each epoch's weights."""
    out.mkdir(parents=True)
    run(f"{trainer} accuracy", [sys.executable, __file__, "--epochs", str(epochs), "--worker", f"accuracy-{trainer}",
                                 str(out / "acc.json")], out.with_suffix(".log"), env)
    return json.loads((out / "acc.json").read_text())


def import_times(repeats: int, env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Seconds (median of `repeats`) to import each engine module in a fresh process, and the modules in it.

    python -X importtime prints each module's cumulative import time where it is first imported: a module
    imported inside another (torchvision inside torchmetrics) is counted in both.
    """
    results = {}
    for engine in ("raw", "lightning"):
        module = f"{{ cookiecutter.package }}.engines.{engine}"
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):
            result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=PROJECT_ROOT,
                                    capture_output=True, text=True, env=env, check=True)
            for line in result.stderr.splitlines():
                parts = line.removeprefix("import time:").split("|")
                if len(parts) == 3 and parts[1].strip().isdigit() and parts[2].strip() in (*IMPORTS, module):
                    name = "whole import" if parts[2].strip() == module else parts[2].strip()
                    samples.setdefault(name, []).append(int(parts[1]) / 1e6)
        results[engine] = {name: statistics.median(values) for name, values in samples.items()}
    return results


def report(runs: dict[str, list[dict]], test_accuracy: dict[str, list[float]], imports: dict, target: float) -> str:
    median_epoch = {t: [statistics.median(m["epoch_times_s"]) for m in runs[t]] for t in TRAINERS}
    fastest_epoch = {t: [min(m["epoch_times_s"]) for m in runs[t]] for t in TRAINERS}

    def ratios(times: dict[str, list[float]], name: str) -> list[float]:  # "raw / bare": one ratio per repeat
        top, bottom = name.split(" / ")
        return [a / b for a, b in zip(times[top], times[bottom], strict=True)]

    lines = ["time per epoch, training + validation (median epoch of each run; runs in order):"]
    for trainer in TRAINERS:
        lines.append(f"  {trainer:<9} {statistics.median(median_epoch[trainer]):.4f} s   "
                     f"({', '.join(f'{t:.4f}' for t in median_epoch[trainer])})")
    for name, target_ratio in TARGETS.items():
        per_repeat = ratios(median_epoch, name)
        verdict = "met" if statistics.median(per_repeat) <= target_ratio else "NOT met"
        lines.append(f"  {name:<15} {statistics.median(per_repeat):.3f}   (per repeat: "
                     f"{', '.join(f'{r:.3f}' for r in per_repeat)}; target <= {target_ratio:.2f}: {verdict})")
    lines.append("  from the fastest epoch of each run (the least disturbed): "
                 + ", ".join(f"{name} {statistics.median(ratios(fastest_epoch, name)):.3f}" for name in TARGETS))
    for name in TARGETS:
        # A cost per batch, whatever the model: the difference per epoch over the optimizer steps of an epoch.
        top, bottom = name.split(" / ")
        extra = statistics.median(a - b for a, b in zip(median_epoch[top], median_epoch[bottom], strict=True))
        steps = runs[top][0]["global_step"] / runs[top][0]["epochs"]
        lines.append(f"  {top} - {bottom}: {1000 * extra:+.1f} ms per epoch, {1000 * extra / steps:+.2f} ms per "
                     f"optimizer step ({steps:.0f} per epoch; validation included)")

    startup = {t: statistics.median(m["startup_s"] for m in runs[t]) for t in TRAINERS}
    lines.append("start-up, process start to the first training step (median):")
    lines.append("  " + "   ".join(f"{t} {startup[t]:.2f} s" for t in TRAINERS))
    lines.append("imports, python -X importtime (a module's time includes the modules it imports first):")
    for engine, times in imports.items():
        parts = ", ".join(f"{name} {times[name]:.2f} s" for name in IMPORTS if name in times)
        lines.append(f"  engines/{engine}.py {times['whole import']:.2f} s: {parts}")

    lines.append(f"time to test/acc >= {target} (training time to the end of the first epoch that reaches it; "
                 "start-up excluded; median):")
    for trainer in TRAINERS:
        accuracies = test_accuracy[trainer]
        reached = next((i + 1 for i, acc in enumerate(accuracies) if acc >= target), None)
        if reached is None:
            lines.append(f"  {trainer:<9} not reached in {len(accuracies)} epochs (best {max(accuracies):.4f})")
            continue
        seconds = statistics.median(sum(m["epoch_times_s"][:reached]) for m in runs[trainer])
        lines.append(f"  {trainer:<9} {seconds:.2f} s  (after epoch {reached}, test/acc {accuracies[reached - 1]:.4f}; "
                     f"with start-up {seconds + startup[trainer]:.2f} s)")
    same = all(test_accuracy[t] == test_accuracy["bare"] for t in TRAINERS)
    lines.append("  test/acc per epoch is " + ("identical in all three trainers: the same training" if same else
                                               "NOT identical in the three trainers: " + json.dumps(test_accuracy)))
    return "\n".join(lines)


# ---- the worker: one run in its own process ---------------------------------------------------------------


def worker(mode: str, out: str, epochs: int) -> None:
    """`bare`: a timed bare run, writes metrics.json; `accuracy-<trainer>`: test accuracy after every epoch."""
    engine = mode.removeprefix("accuracy-")
    cfg = compose_config(epochs, [f"engine={engine}"] if engine in ("raw", "lightning") else [])
    if mode == "bare":
        metrics = bare_loop(cfg)
    elif mode == "accuracy-bare":
        weights: list[dict] = []
        bare_loop(cfg, on_epoch_end=lambda model: weights.append(clone(model.state_dict())))
        metrics = test_accuracies(cfg, weights)
    elif mode in ("accuracy-raw", "accuracy-lightning"):
        metrics = test_accuracies(cfg, engine_weights_per_epoch(cfg, engine, Path(out).parent))
    else:
        sys.exit(f"error: --worker {mode}: use bare or accuracy-<bare|raw|lightning>")
    Path(out).write_text(json.dumps(metrics))


def compose_config(epochs: int, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from {{ cookiecutter.package }}.rundir import register_resolvers

    register_resolvers()  # configs/hydra/default.yaml uses it, as in train.py
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*OVERRIDES, f"trainer.max_epochs={epochs}", *overrides])


def clone(state_dict: dict) -> dict:
    return {key: value.detach().clone() for key, value in state_dict.items()}


def bare_loop(cfg, on_epoch_end=None) -> dict:
    """The minimal loop; times each epoch (training + validation) and the start-up, like the engines.

    The middle rung of a ladder: tour/05_training_loop.py teaches this loop on toy data; here it runs on this
    project's data, model, optimizer and schedule (the floor the engines are measured against); engines/raw.py
    adds everything else lightning.Trainer does, by hand.
    """
    import torch
    import torch.nn.functional as F

    from {{ cookiecutter.package }} import launch, task
    from {{ cookiecutter.package }}.data import DataPipeline
    from {{ cookiecutter.package }}.models import build_model

    trainer = cfg.trainer
    if (trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val or str(trainer.precision) != "32-true"
            or trainer.limit_train_batches is not None or trainer.max_steps != -1):
        sys.exit("error: the bare loop implements the default trainer config only (no accumulation, clipping, "
                 "mixed precision, batch limits or max_steps)")
    launch.seed_everything(cfg.seed)  # as launch.train does: the same initial weights as the engines
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.prepare_data()
    data.setup("fit")
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    model = build_model(cfg.model)
    optimizer, schedule = task.configure_optimizers(cfg, model, total_steps=trainer.max_epochs * len(train_loader))
    if schedule and schedule.interval != "step":
        sys.exit("error: the bare loop steps step-interval schedulers only (the default, onecycle)")

    epoch_times, train_started_at = [], time.perf_counter()
    for epoch in range(trainer.max_epochs):
        epoch_started = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)  # the engines' data order
        model.train()
        for inputs, targets in train_loader:
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if schedule:
                schedule.scheduler.step()
        model.eval()
        loss_sum, correct, count = torch.zeros(()), torch.zeros((), dtype=torch.int64), 0
        with torch.no_grad():
            for inputs, targets in val_loader:
                logits = model(inputs)
                loss_sum += F.cross_entropy(logits, targets, reduction="sum")
                correct += (logits.argmax(dim=1) == targets).sum()
                count += len(targets)
        val_loss, val_acc = (loss_sum / count).item(), correct.item() / count
        epoch_times.append(time.perf_counter() - epoch_started)
        if on_epoch_end is not None:
            on_epoch_end(model)
    return {"epoch_times_s": epoch_times, "startup_s": train_started_at - STARTED, "train/loss": loss.item(),
            "val/loss": val_loss, "val/acc": val_acc, "epochs": trainer.max_epochs,
            "global_step": trainer.max_epochs * len(train_loader)}


def engine_weights_per_epoch(cfg, engine: str, run_dir: Path) -> list[dict]:
    """Train with the engine in this process and keep the model weights each time it writes last.ckpt (at the
    end of every epoch), by wrapping the function that writes it."""
    from {{ cookiecutter.package }} import launch

    weights: dict[int, dict] = {}
    if engine == "raw":
        from {{ cookiecutter.package }}.engines import raw

        write = raw.save_checkpoint

        def keep_weights(state, path):
            write(state, path)
            if Path(path).name == "last.ckpt":
                weights[state["progress"]["epoch"]] = clone(state["model"])

        raw.save_checkpoint = keep_weights
    else:
        import lightning as L

        write = L.Trainer.save_checkpoint

        def keep_weights(trainer, filepath, *args, **kwargs):
            write(trainer, filepath, *args, **kwargs)
            if Path(filepath).name == "last.ckpt":  # written at the end of epoch current_epoch (0-based)
                weights[trainer.current_epoch + 1] = clone(trainer.lightning_module.model.state_dict())

        L.Trainer.save_checkpoint = keep_weights
    launch.train(cfg, run_dir / engine)
    if sorted(weights) != list(range(1, cfg.trainer.max_epochs + 1)):
        sys.exit(f"error: engine={engine} wrote last.ckpt after epochs {sorted(weights)}, expected every epoch")
    return [weights[epoch] for epoch in sorted(weights)]


def test_accuracies(cfg, weights: list[dict]) -> list[float]:
    """The test-set accuracy of each state_dict, all evaluated by this one function."""
    import torch

    from {{ cookiecutter.package }}.data import DataPipeline
    from {{ cookiecutter.package }}.models import build_model

    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.setup("test")
    model = build_model(cfg.model)
    accuracies = []
    for state in weights:
        model.load_state_dict(state)
        model.eval()
        correct = count = 0
        with torch.no_grad():
            for inputs, targets in data.test_dataloader():
                correct += (model(inputs).argmax(dim=1) == targets).sum().item()
                count += len(targets)
        accuracies.append(correct / count)
    return accuracies


if __name__ == "__main__":
    main()
