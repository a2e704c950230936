"""What each rung of the engine ladder costs, and Lightning itself: python benchmarks/engine_overhead.py

Five trainers do the same training (digits, the default cnn, batch size, optimizer, OneCycleLR and seed of
configs/, so the same losses step for step):

  minimal    python train.py engine=minimal: the loop a learner writes (forward, loss, backward, step, zero_grad,
             the scheduler, a validation pass per epoch, best and last checkpoints, TensorBoard scalars); the
             floor every other rung is measured against
  fabric     python train.py engine=fabric: the same loop under Lightning Fabric
  raw        python train.py engine=raw: everything lightning.Trainer does, by hand
  floor      the Lightning floor: a LightningModule as short as Lightning allows (training_step returns the loss,
             validation_step logs val/loss and val/acc, configure_optimizers calls task.configure_optimizers) on
             the engine's DataModule, under L.Trainer(logger=False, enable_checkpointing=False, no progress bar or
             model summary; accelerator, devices, precision, max_epochs and deterministic from configs/trainer).
             Trainer(barebones=True) would be shorter still, but it refuses self.log, which validation needs
  lightning  python train.py engine=lightning

and four reference processes, with the same environment:

  import torch, import lightning      python -c "import torch" (and lightning): what an import alone costs
  import torch + an optimizer         python -c "import torch; torch.optim.SGD(...)": the first optimizer imports
                                      torch._dynamo, so this is what any training process pays before its first step
  train.py engine=raw, =lightning     the default command, python train.py engine=<e> data=digits (a no-op where
                                      digits is the default dataset) paths.log_dir=<scratch>
                                      trainer.enable_progress_bar=false, timed from spawn to exit

Every run is its own process, and each repeat runs all of them in turn (minimal, fabric, raw, floor, lightning,
import torch, import lightning, import torch + an optimizer, train.py engine=raw, train.py engine=lightning, then
python -X importtime of each engine), so that a slower period of the machine hits all alike. Each figure is given
as the median over --repeats and the spread (min-max); a ratio is taken within each repeat, then its median and
spread over the repeats. Beside the wall time of each process (spawn to exit, from this script) is its CPU time
(user + sys, from getrusage of the children), and the load average is printed before and after. Printed:

* time per epoch: training + the validation pass, as metrics.json epoch_times_s measures it in every engine
  (checkpoint writes after validation are outside it; the floor times the same span); the median epoch of each
  run, the ratios fabric/minimal (what Fabric costs per step), raw/minimal, floor/minimal (what Lightning's
  Trainer itself costs per batch), lightning/floor and lightning/raw, and each difference in ms per epoch and per
  optimizer step;
* start-up: from the process start to the first training step (metrics.json startup_s, timed from train.py's
  first line; the same clock in the floor), against the wall time of the python -c "import torch" (minimal,
  raw) and "import lightning" (fabric, lightning) processes of the same repeat (the targets), and against the import
  alone, which those processes print: their wall time also holds the interpreter's start and exit, which
  startup_s does not (a process that imported torch is slow to exit: benchmarks/README.md); and what the
  imports cost (python -X importtime);
* whole process: the wall and CPU time of every run; the targets are for the default commands;
* targets: each target of the issue with its median, spread and whether the median meets it; the timings are
  the benchmark's output, never asserted by a test;
* time to accuracy: the training time (sum of epoch times, start-up excluded) up to the end of the first
  epoch after which the test-set accuracy of the weights is >= --target. The engines evaluate the test set only
  once, at the end, so the accuracy per epoch comes from separate untimed runs that keep each epoch's weights
  as the engine writes last.ckpt (the floor: at the end of each epoch) and evaluate them all on the test set
  with one evaluation function.

--json PATH writes every figure for tools to read, with the keys: environment, arguments, order, load_average
(before, after), runs (per run name, one dict per repeat: the run's metrics, wall_s, cpu_s), figures (per name:
per_repeat, median, min, max, unit: "s" or "" for a ratio), targets (per target: figure, limit, unit,
per_repeat, median, min, max, met), differences (per pair: ms_per_epoch, steps_per_epoch, ms_per_step),
imports (per engine: seconds per module), time_to_accuracy (target, per_trainer) and test_accuracy
(same_training, per_epoch).

Each process uses one torch thread (--threads 1, OMP_NUM_THREADS) unless told otherwise: this model is too small
to gain from a second thread, and on a machine with any other load two OpenMP threads that wait for each other
made epochs 10 to 40 times slower, and erratic (benchmarks/README.md gives the figures).
"""

import time

STARTED = time.perf_counter()  # the floor's start-up is timed from here, as train.py times the engines'

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from datetime import datetime  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ("minimal", "fabric", "raw", "floor", "lightning")
ENGINES = ("minimal", "fabric", "raw", "lightning")  # python train.py engine=<engine>; the others are this script's
# python -c "import <module>" processes: the start-up each engine is held against (fabric imports all of lightning).
REFERENCES = {"import torch": "torch", "import lightning": "lightning"}
ENGINE_REFERENCES = {
    "minimal": "import torch",
    "fabric": "import lightning",
    "raw": "import torch",
    "lightning": "import lightning",
}
# What any PyTorch training process pays before its first step: torch, and torch._dynamo, which the first optimizer
# imports (Optimizer.add_param_group is wrapped by torch._disable_dynamo): the floor of a start-up without lightning.
TRAINING_FLOOR = "import torch + an optimizer"
TRAINING_FLOOR_CODE = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"
DEFAULT_RUNS = tuple(f"train.py engine={engine}" for engine in ("raw", "lightning"))  # the targets' commands
IMPORTTIME_RUNS = tuple(f"importtime {engine}" for engine in ENGINES)
ORDER = (*TRAINERS, *REFERENCES, TRAINING_FLOOR, *DEFAULT_RUNS, *IMPORTTIME_RUNS)  # the runs of one repeat, in turn
# The training every trainer does: the bundled data and the default model whatever the template's default
# dataset is; no progress bar (it would only write to a pipe).
OVERRIDES = ["data=digits", "model=cnn", "trainer.enable_progress_bar=false"]
# Modules whose import time is reported, by the name python -X importtime prints. torchvision comes in with
# torchmetrics (torchmetrics.functional.image).
IMPORTS = ("torch", "torchmetrics", "torchvision", "torch.utils.tensorboard", "hydra", "lightning")
# Per-epoch ratios, each taken within one repeat: the top trainer's median epoch over the bottom one's.
EPOCH_RATIOS = ("fabric / minimal", "raw / minimal", "floor / minimal", "lightning / floor", "lightning / raw")
# The targets: (what, figure, limit). A ratio has no unit; a figure in s is a wall time.
TARGETS = (
    ("raw start-up <= 1.3 x python -c 'import torch'", "start-up raw / import torch", 1.30),
    ("lightning start-up <= 1.05 x python -c 'import lightning'", "start-up lightning / import lightning", 1.05),
    ("raw / minimal per epoch <= 1.03", "epoch raw / minimal", 1.03),
    ("lightning / floor per epoch <= 1.03", "epoch lightning / floor", 1.03),
    ("python train.py engine=raw <= 4 s", "wall train.py engine=raw", 4.0),
    ("python train.py engine=lightning <= 6 s", "wall train.py engine=lightning", 6.0),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each trainer (default: 3)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default: 10, as configs/trainer)")
    parser.add_argument("--target", type=float, default=0.97, help="test accuracy for time-to-accuracy (0.97)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process, OMP_NUM_THREADS (default: 1, see below; 0: torch's choice)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)  # one run, internal
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.epochs < 1 or not 0 < args.target <= 1:
        parser.error("--repeats and --epochs must be at least 1 and --target in (0, 1]")
    if args.worker:
        worker(*args.worker, epochs=args.epochs)
        return

    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    load_before = os.getloadavg()
    environ = environment(args)
    print(
        f"{environ['date']}, {environ['processor']}, {environ['cpus']} CPUs, torch {environ['torch']} (threads: "
        f"{environ['threads']}), lightning {environ['lightning']}, python {environ['python']}; load average "
        f"before: {loads(load_before)}\n{args.repeats} repeats x {len(ORDER)} runs x {args.epochs} epochs, "
        f"interleaved: {', '.join(ORDER)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="engine_overhead_") as scratch:
        runs: dict[str, list[dict]] = {name: [] for name in ORDER}  # per run name: one dict per repeat
        for repeat in range(args.repeats):
            for name in ORDER:
                print(f"run {repeat + 1}/{args.repeats}: {name:<25}", end=" ", flush=True)
                out = Path(scratch) / f"{re.sub('[^a-z0-9]+', '_', name)}_{repeat}"  # train_py_engine_raw_0
                runs[name].append(run_once(name, out, args.epochs, env))
                print(progress(runs[name][-1]), flush=True)
        print("accuracy per epoch (untimed runs that keep each epoch's weights) ...", flush=True)
        test_accuracy = {
            trainer: accuracy_run(trainer, Path(scratch) / f"{trainer}_accuracy", args.epochs, env)
            for trainer in TRAINERS
        }
    load_after = os.getloadavg()
    summary = summarize(runs, test_accuracy, args.target)
    print()
    print(report(summary))
    print(f"load average before: {loads(load_before)}, after: {loads(load_after)}")
    if args.json:
        document = json_document(summary, runs, environ, vars(args), load_before, load_after)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"figures written to {args.json}")


def loads(load: tuple[float, ...]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def environment(args: argparse.Namespace) -> dict:
    import torch  # only for its version and thread count

    return {
        "date": f"{datetime.now():%Y-%m-%d %H:%M}",
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "lightning": version("lightning"),
        "python": platform.python_version(),
    }


def progress(result: dict) -> str:
    """The line printed after each run."""
    line = f"wall {result['wall_s']:.2f} s, cpu {result['cpu_s']:.2f} s"
    if "epoch_times_s" in result:
        line += (
            f"; median epoch {statistics.median(result['epoch_times_s']):.4f} s, start-up {result['startup_s']:.2f} s"
        )
    if "import_s" in result:
        line += f"; the import {result['import_s']:.2f} s"
    return line


# ---- the runs, each its own process ---------------------------------------------------------------------------


def measured(name: str, command: list[str], log: Path, env: dict[str, str]) -> dict[str, float]:
    """Run `command` with its output in `log`; returns its wall time (spawn to exit) and CPU time (user + sys,
    from the rusage of the children before and after). A failure stops the benchmark with the run's last lines."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w") as output:
        result = subprocess.run(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        tail = "\n".join(f"    {line}" for line in log.read_text().splitlines()[-15:])
        sys.exit(
            f"failed\n{tail}\nerror: the {name} run failed with exit code {result.returncode} (its last lines "
            "are above)"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def run_once(name: str, out: Path, epochs: int, env: dict[str, str]) -> dict:
    """One run of `name` (one of ORDER) in its own process: its wall_s and cpu_s, with its metrics (a trainer's
    metrics.json: epoch_times_s, startup_s, ...; a reference's import_s; an importtime run's imports)."""
    from {{ cookiecutter.package }}.workflows.comparison import hydra_quoted

    out.mkdir(parents=True)
    log = out.parent / f"{out.name}.log"
    if name == "floor":
        command = [sys.executable, __file__, "--epochs", str(epochs), "--worker", name, str(out / "metrics.json")]
    elif name in ENGINES:
        command = [
            sys.executable,
            "train.py",
            f"engine={name}",
            *OVERRIDES,
            f"trainer.max_epochs={epochs}",
            f"hydra.run.dir={hydra_quoted(str(out))}",
        ]
    elif name in (*REFERENCES, TRAINING_FLOOR):  # python -c "import torch", which also prints the import alone
        code = TRAINING_FLOOR_CODE if name == TRAINING_FLOOR else f"import {REFERENCES[name]}"
        command = [
            sys.executable,
            "-c",
            f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)",
        ]
        result = measured(name, command, log, env)
        return {**result, "import_s": float(log.read_text().split()[-1])}
    elif name in DEFAULT_RUNS:
        command = [
            sys.executable,
            "train.py",
            name.removeprefix("train.py "),
            "data=digits",
            f"paths.log_dir={hydra_quoted(str(out))}",
            "trainer.enable_progress_bar=false",
        ]
        return measured(name, command, log, env)
    elif name in IMPORTTIME_RUNS:
        module = f"{{ cookiecutter.package }}.engines.{name.removeprefix('importtime ')}"
        result = measured(name, [sys.executable, "-X", "importtime", "-c", f"import {module}"], log, env)
        return {**result, "imports": import_times(log.read_text(), module)}
    else:
        raise ValueError(f"unknown run {name!r}")
    result = measured(name, command, log, env)
    return {**json.loads((out / "metrics.json").read_text()), **result}


def import_times(importtime_output: str, module: str) -> dict[str, float]:
    """Seconds to import each module of IMPORTS (and `module`, as "whole import") from python -X importtime's output.

    It prints each module's cumulative import time where it is first imported: a module imported inside another
    (torchvision inside torchmetrics) is counted in both.
    """
    times = {}
    for line in importtime_output.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and parts[2].strip() in (*IMPORTS, module):
            times["whole import" if parts[2].strip() == module else parts[2].strip()] = int(parts[1]) / 1e6
    return times


def accuracy_run(trainer: str, out: Path, epochs: int, env: dict[str, str]) -> list[float]:
    """Test accuracy after each epoch, from an untimed run of `trainer` that keeps each epoch's weights."""
    out.mkdir(parents=True)
    measured(
        f"{trainer} accuracy",
        [sys.executable, __file__, "--epochs", str(epochs), "--worker", f"accuracy-{trainer}", str(out / "acc.json")],
        out.parent / f"{out.name}.log",
        env,
    )
    return json.loads((out / "acc.json").read_text())


# ---- the figures ----------------------------------------------------------------------------------------------


def spread(values: list[float], unit: str = "") -> dict:
    return {
        "per_repeat": list(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "unit": unit,
    }


def summarize(runs: dict[str, list[dict]], test_accuracy: dict[str, list[float]], target: float) -> dict:
    """Every figure from the runs (per run name, one dict per repeat): see the module docstring."""
    figures: dict[str, dict] = {}
    for trainer in TRAINERS:
        figures[f"epoch {trainer}"] = spread([statistics.median(m["epoch_times_s"]) for m in runs[trainer]], "s")
        figures[f"fastest epoch {trainer}"] = spread([min(m["epoch_times_s"]) for m in runs[trainer]], "s")
        figures[f"start-up {trainer}"] = spread([m["startup_s"] for m in runs[trainer]], "s")
    for kind in ("epoch", "fastest epoch"):
        for name in EPOCH_RATIOS:
            top, bottom = name.split(" / ")
            figures[f"{kind} {name}"] = spread(
                [
                    a / b
                    for a, b in zip(
                        figures[f"{kind} {top}"]["per_repeat"], figures[f"{kind} {bottom}"]["per_repeat"], strict=True
                    )
                ]
            )
    for reference, module in REFERENCES.items():
        figures[f"import {module} alone"] = spread([m["import_s"] for m in runs[reference]], "s")
    figures[f"{TRAINING_FLOOR} alone"] = spread([m["import_s"] for m in runs[TRAINING_FLOOR]], "s")
    for engine, reference in (*ENGINE_REFERENCES.items(), ("minimal", TRAINING_FLOOR), ("raw", TRAINING_FLOOR)):
        pairs = list(zip(runs[engine], runs[reference], strict=True))
        figures[f"start-up {engine} / {reference}"] = spread([m["startup_s"] / r["wall_s"] for m, r in pairs])
        # The same clock on both sides: the reference's import alone leaves out the interpreter's start and exit.
        figures[f"start-up {engine} / {reference} alone"] = spread([m["startup_s"] / r["import_s"] for m, r in pairs])
    for name in ORDER:
        figures[f"wall {name}"] = spread([m["wall_s"] for m in runs[name]], "s")
        figures[f"cpu {name}"] = spread([m["cpu_s"] for m in runs[name]], "s")

    differences = {}
    for name in EPOCH_RATIOS:
        # A cost per batch, whatever the model: the difference per epoch over the optimizer steps of an epoch.
        top, bottom = name.split(" / ")
        extra = statistics.median(
            a - b
            for a, b in zip(
                figures[f"epoch {top}"]["per_repeat"], figures[f"epoch {bottom}"]["per_repeat"], strict=True
            )
        )
        steps = runs[top][0]["global_step"] / runs[top][0]["epochs"]
        differences[f"{top} - {bottom}"] = {
            "ms_per_epoch": 1000 * extra,
            "steps_per_epoch": steps,
            "ms_per_step": 1000 * extra / steps,
        }

    targets = {}
    for what, figure, limit in TARGETS:
        value = figures[figure]
        targets[what] = {
            "figure": figure,
            "limit": limit,
            "unit": value["unit"],
            **{k: value[k] for k in ("per_repeat", "median", "min", "max")},
            "met": value["median"] <= limit,
        }

    imports = {}
    for engine, name in zip(ENGINES, IMPORTTIME_RUNS, strict=True):
        samples = [m["imports"] for m in runs[name]]
        imports[engine] = {
            module: statistics.median(s[module] for s in samples if module in s)
            for module in ("whole import", *IMPORTS)
            if any(module in s for s in samples)
        }

    time_to_accuracy = {}
    for trainer in TRAINERS:
        accuracies = test_accuracy[trainer]
        reached = next((i + 1 for i, acc in enumerate(accuracies) if acc >= target), None)
        entry = {"epoch": reached, "best_test_acc": max(accuracies), "epochs": len(accuracies)}
        if reached is not None:
            seconds = statistics.median(sum(m["epoch_times_s"][:reached]) for m in runs[trainer])
            entry.update(
                test_acc=accuracies[reached - 1],
                training_s=seconds,
                with_startup_s=seconds + figures[f"start-up {trainer}"]["median"],
            )
        time_to_accuracy[trainer] = entry
    return {
        "figures": figures,
        "differences": differences,
        "targets": targets,
        "imports": imports,
        "target_accuracy": target,
        "time_to_accuracy": time_to_accuracy,
        "test_accuracy": test_accuracy,
        "same_training": all(test_accuracy[t] == test_accuracy["minimal"] for t in TRAINERS),
    }


def json_document(
    summary: dict,
    runs: dict[str, list[dict]],
    environ: dict,
    arguments: dict,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> dict:
    """What --json writes: the keys listed in the module docstring."""
    return {
        "environment": environ,
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items() if k != "worker"},
        "order": list(ORDER),
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "runs": runs,
        "figures": summary["figures"],
        "targets": summary["targets"],
        "differences": summary["differences"],
        "imports": summary["imports"],
        "time_to_accuracy": {"target": summary["target_accuracy"], "per_trainer": summary["time_to_accuracy"]},
        "test_accuracy": {"same_training": summary["same_training"], "per_epoch": summary["test_accuracy"]},
    }


def figure(value: dict, digits: int = 4, unit: str | None = None) -> str:
    """A figure as `median [min-max]`."""
    unit = value["unit"] if unit is None else unit
    suffix = f" {unit}" if unit else ""
    return f"{value['median']:.{digits}f}{suffix} [{value['min']:.{digits}f}-{value['max']:.{digits}f}]"


def per_repeat(value: dict, digits: int = 4) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in value["per_repeat"])


def report(summary: dict) -> str:
    """The printed figures: each a median [min-max] over the repeats."""
    figures = summary["figures"]
    lines = ["time per epoch, training + validation (median epoch of each run: median [min-max]; runs in order):"]
    for trainer in TRAINERS:
        value = figures[f"epoch {trainer}"]
        lines.append(f"  {trainer:<17} {figure(value)}   ({per_repeat(value)})")
    for name in EPOCH_RATIOS:
        value = figures[f"epoch {name}"]
        lines.append(f"  {name:<17} {figure(value, 3)}   (per repeat: {per_repeat(value, 3)})")
    lines.append(
        "  from the fastest epoch of each run (the least disturbed): "
        + ", ".join(f"{name} {figures[f'fastest epoch {name}']['median']:.3f}" for name in EPOCH_RATIOS)
    )
    for name, difference in summary["differences"].items():
        lines.append(
            f"  {name}: {difference['ms_per_epoch']:+.1f} ms per epoch, {difference['ms_per_step']:+.2f} ms "
            f"per optimizer step ({difference['steps_per_epoch']:.0f} per epoch; validation included)"
        )

    lines.append("start-up, process start to the first training step (median [min-max]):")
    lines.append("  " + "   ".join(f"{t} {figure(figures[f'start-up {t}'], 2)}" for t in TRAINERS))
    for reference, module in REFERENCES.items():
        lines.append(
            f"  python -c 'import {module}': wall {figure(figures[f'wall {reference}'], 2)}, cpu "
            f"{figure(figures[f'cpu {reference}'], 2)}, the import alone "
            f"{figure(figures[f'import {module} alone'], 2)}"
        )
        for engine in (engine for engine, ref in ENGINE_REFERENCES.items() if ref == reference):
            lines.append(
                f"    {engine} start-up / that wall {figure(figures[f'start-up {engine} / {reference}'], 3)}, "
                f"/ the import alone {figure(figures[f'start-up {engine} / {reference} alone'], 3)}"
            )
    lines.append(
        f"  python -c '{TRAINING_FLOOR_CODE}' (the floor of any training process): wall "
        f"{figure(figures[f'wall {TRAINING_FLOOR}'], 2)}, its code alone "
        f"{figure(figures[f'{TRAINING_FLOOR} alone'], 2)}"
    )
    for engine in ("minimal", "raw"):
        lines.append(
            f"    {engine} start-up / that wall {figure(figures[f'start-up {engine} / {TRAINING_FLOOR}'], 3)}, "
            f"/ its code alone {figure(figures[f'start-up {engine} / {TRAINING_FLOOR} alone'], 3)}"
        )
    lines.append("imports, python -X importtime (a module's time includes the modules it imports first; median):")
    for engine, times in summary["imports"].items():
        parts = ", ".join(f"{name} {times[name]:.2f} s" for name in IMPORTS if name in times)
        lines.append(f"  engines/{engine}.py {times['whole import']:.2f} s: {parts}")

    lines.append("whole process, spawn to exit (median [min-max]):")
    for name in ORDER:
        lines.append(
            f"  {name:<25} wall {figure(figures[f'wall {name}'], 2)}   "
            f"cpu (user+sys) {figure(figures[f'cpu {name}'], 2)}"
        )

    target = summary["target_accuracy"]
    lines.append(
        f"time to test/acc >= {target} (training time to the end of the first epoch that reaches it; "
        "start-up excluded; median):"
    )
    for trainer, entry in summary["time_to_accuracy"].items():
        if entry["epoch"] is None:
            lines.append(f"  {trainer:<9} not reached in {entry['epochs']} epochs (best {entry['best_test_acc']:.4f})")
            continue
        lines.append(
            f"  {trainer:<9} {entry['training_s']:.2f} s  (after epoch {entry['epoch']}, test/acc "
            f"{entry['test_acc']:.4f}; with start-up {entry['with_startup_s']:.2f} s)"
        )
    lines.append(
        "  test/acc per epoch is "
        + (
            f"identical in all {len(TRAINERS)} trainers: the same training"
            if summary["same_training"]
            else f"NOT identical in the {len(TRAINERS)} trainers: " + json.dumps(summary["test_accuracy"])
        )
    )

    lines.append("targets (median [min-max] over the repeats; met: the median is within the target):")
    for what, entry in summary["targets"].items():
        lines.append(f"  {what:<58} {figure(entry, 3)}   {'met' if entry['met'] else 'NOT met'}")
    return "\n".join(lines)


# ---- the worker: one run in its own process ---------------------------------------------------------------


def worker(mode: str, out: str, epochs: int) -> None:
    """`floor`: a timed run, writes metrics.json; `accuracy-<trainer>`: test accuracy after every epoch."""
    trainer = mode.removeprefix("accuracy-")
    cfg = compose_config(epochs, [f"engine={trainer}"] if trainer in ENGINES else [])
    if mode == "floor":
        metrics = floor_loop(cfg)
    elif mode == "accuracy-floor":
        weights: list[dict] = []
        floor_loop(cfg, on_epoch_end=lambda model: weights.append(clone(model.state_dict())))
        metrics = test_accuracies(cfg, weights)
    elif mode.startswith("accuracy-") and trainer in ENGINES:
        metrics = test_accuracies(cfg, engine_weights_per_epoch(cfg, trainer, Path(out).parent))
    else:
        sys.exit(f"error: --worker {mode}: use floor or accuracy-<{'|'.join(TRAINERS)}>")
    Path(out).write_text(json.dumps(metrics))


def compose_config(epochs: int, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from {{ cookiecutter.package }}.run.rundir import register_resolvers

    register_resolvers()  # configs/hydra/default.yaml uses it, as in train.py
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*OVERRIDES, f"trainer.max_epochs={epochs}", *overrides])


def clone(state_dict: dict) -> dict:
    return {key: value.detach().clone() for key, value in state_dict.items()}


def check_default_trainer(cfg, loop: str) -> None:
    trainer = cfg.trainer
    if (
        trainer.accumulate_grad_batches != 1
        or trainer.gradient_clip_val
        or str(trainer.precision) not in ("32-true", "bf16-mixed")
        or trainer.limit_train_batches is not None
        or trainer.max_steps != -1
    ):
        sys.exit(
            f"error: the {loop} implements the default trainer config only (no accumulation, clipping, "
            "precision other than 32-true or bf16-mixed, batch limits or max_steps)"
        )


def floor_loop(cfg, on_epoch_end=None) -> dict:
    """The Lightning floor: the same training in a LightningModule as short as Lightning allows, under a Trainer
    with everything off that can be (logger, checkpoints, progress bar, model summary). What lightning.Trainer
    costs by itself; engines/lightning.py is measured against it. Epochs and start-up are timed as the engine's
    EpochTimer times them (on_train_start; on_train_epoch_start to the non-monitoring on_train_epoch_end, after
    the validation)."""
    import lightning as L
    import torch.nn.functional as F

    from {{ cookiecutter.package }}.core import task
    from {{ cookiecutter.package }}.core.models import build_model
    from {{ cookiecutter.package }}.engines.lightning import DataModule
    from {{ cookiecutter.package }}.workflows import launch

    check_default_trainer(cfg, "floor")
    launch.seed_everything(cfg.seed)  # as launch.train does: the same initial weights as the engines

    class Floor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model(cfg.model)

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return F.cross_entropy(self.model(inputs), targets)

        def validation_step(self, batch, batch_idx):
            inputs, targets = batch
            logits = self.model(inputs)
            self.log("val/loss", F.cross_entropy(logits, targets))
            self.log("val/acc", (logits.argmax(dim=1) == targets).float().mean())

        def configure_optimizers(self):
            optimizer, schedule = task.configure_optimizers(cfg, self.model, self.trainer.estimated_stepping_batches)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule.scheduler, "interval": schedule.interval},
            }

    class Timer(L.Callback):  # as engines/lightning.py's EpochTimer; and the last loss, for the test
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_start(self, trainer, module):
            self.train_started_at = time.perf_counter()

        def on_train_epoch_start(self, trainer, module):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.loss = outputs["loss"]

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self.started)
            if on_epoch_end is not None:
                on_epoch_end(module.model)

    if cfg.scheduler.get("interval") != "step":
        sys.exit("error: the floor steps step-interval schedulers only (the default, onecycle)")
    timer, data = Timer(), DataModule(cfg.data, seed=cfg.seed)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        max_epochs=cfg.trainer.max_epochs,
        deterministic=cfg.trainer.deterministic,
        use_distributed_sampler=False,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Floor(), datamodule=data)
    return {
        "epoch_times_s": timer.times,
        "startup_s": timer.train_started_at - STARTED,
        "train/loss": timer.loss.item(),
        **{k: v.item() for k, v in trainer.callback_metrics.items()},
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
    }


def engine_weights_per_epoch(cfg, engine: str, run_dir: Path) -> list[dict]:
    """Train with the engine in this process and keep the model weights each time it writes last.ckpt (at the
    end of every epoch), by wrapping the function that writes it."""
    from {{ cookiecutter.package }}.workflows import launch

    weights: dict[int, dict] = {}
    if engine in ("minimal", "raw"):  # both write through run/checkpoint.py's save_checkpoint(state, path)
        module = importlib.import_module(f"{{ cookiecutter.package }}.engines.{engine}")
        write = module.save_checkpoint

        def keep_weights(state, path):
            write(state, path)
            if Path(path).name == "last.ckpt":
                weights[state["progress"]["epoch"]] = clone(state["model"])

        module.save_checkpoint = keep_weights
    elif engine == "fabric":
        from lightning.fabric import Fabric

        write = Fabric.save

        def keep_weights(fabric, path, state, *args, **kwargs):
            write(fabric, path, state, *args, **kwargs)
            if Path(path).name == "last.ckpt":  # state["model"]: the module Fabric set up, its weights as they are
                weights[state["progress"]["epoch"]] = clone(state["model"].state_dict())

        Fabric.save = keep_weights
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

    from {{ cookiecutter.package }}.core.data import DataPipeline
    from {{ cookiecutter.package }}.core.models import build_model

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
