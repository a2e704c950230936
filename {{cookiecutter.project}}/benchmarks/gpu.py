"""experiment=cifar10 on a CUDA GPU, both engines, with and without torch.compile: python benchmarks/gpu.py

Runs `python train.py experiment=cifar10 engine=<raw|lightning> compile=<false|true>
trainer.precision=bf16-mixed` (the recipe: ResNet-9, 30 epochs, batch 512, data.loader=tensor), one process at a
time, and prints a table from each run's metrics.json:

* time per epoch: the median of epoch_times_s (training + validation), and the first epoch apart (with
  compile=true it holds the compilation);
* time to --target test accuracy (0.93): the engines test once, at the end of the schedule (the one-cycle recipe
  is planned to reach its accuracy there), so this is the training time of the whole run (sum of epoch_times_s,
  start-up excluded) when the final test/acc reaches the target, else "not reached" and the final accuracy;
* the final test/acc, the start-up (metrics.json startup_s) and the process's wall time.

Before anything it refuses, in one line, a machine without a CUDA device and a data folder without the CIFAR-10
files (data/cifar-10-batches-py, or --data-dir: download them once on a machine with internet, e.g. `python -c
"import torchvision; torchvision.datasets.CIFAR10('data', download=True)"`, or pass --download to let train.py
download them). --synthetic runs without them instead: it writes --images synthetic images in CIFAR-10's
format (benchmarks/data_loading.py's files, random pixels: the timings hold, the accuracy is chance), says so.
--dry-run prints the commands and runs nothing; --epochs N shortens every run (the one-cycle
schedule is then planned for N epochs); --json PATH writes the figures; extra arguments after `--` go to every
train.py command (e.g. -- data.loader=dataloader to time the DataLoader path).
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_loading  # noqa: E402  (the synthetic CIFAR-10 files, in benchmarks/ beside this script)

# Runs train.py in a process that first trusts the synthetic files (torchvision checks the md5 of its own).
TRUSTING_LAUNCHER = (
    "import runpy, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import data_loading; "
    "data_loading.trust_synthetic_cifar(Path(sys.argv[2])); sys.argv = sys.argv[3:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
RUNS = [(engine, compile_) for engine in ("raw", "lightning") for compile_ in ("false", "true")]


def commands(args: argparse.Namespace, log_dir: Path, runs_wanted=RUNS) -> dict[str, list[str]]:
    """The train.py command of each (engine, compile) run, its outputs under log_dir/<engine>-compile-<c>; on
    synthetic files (args.synthetic_root), through TRUSTING_LAUNCHER."""
    runs = {}
    synthetic_root = getattr(args, "synthetic_root", None)
    launcher = ["-c", TRUSTING_LAUNCHER, str(Path(__file__).resolve().parent), str(synthetic_root)]
    for engine, compile_ in runs_wanted:
        name = f"{engine}-compile-{compile_}"
        runs[name] = [
            sys.executable,
            *(launcher if synthetic_root else []),
            "train.py",
            "experiment=cifar10",
            f"engine={engine}",
            f"compile={compile_}",
            "trainer.precision=bf16-mixed",
            f"data.root={args.data_dir}",
            f"data.download={str(args.download).lower()}",
            f"paths.log_dir={log_dir / name}",
            "trainer.enable_progress_bar=false",
            *([f"trainer.max_epochs={args.epochs}"] if args.epochs else []),
            *args.overrides,
        ]
    return runs


def refusal(args: argparse.Namespace) -> str | None:
    """Why this machine cannot run the benchmark, in one line; None when it can."""
    import torch

    if not torch.cuda.is_available():
        return (
            "error: no CUDA device here (torch.cuda.is_available() is False): benchmarks/gpu.py times the GPU "
            "recipe; run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use --dry-run"
        )
    missing = [name for name in CIFAR_FILES if not (args.data_dir / "cifar-10-batches-py" / name).is_file()]
    if missing and not args.download and not args.synthetic:
        return (
            f"error: no CIFAR-10 files in {args.data_dir / 'cifar-10-batches-py'} ({missing[0]} missing): "
            "download them once on a machine with internet and put the folder there, pass --download, or "
            "--synthetic to time synthetic files"
        )
    return None


def use_synthetic_if_missing(args: argparse.Namespace, folder: Path) -> bool:
    """Without the real files (and without --download), writes args.images synthetic ones under `folder` and points
    args.data_dir at them; says so. True when it did."""
    if data_loading.real_cifar(args.data_dir) or args.download:
        args.synthetic_root = None
        return False
    data_loading.write_synthetic_cifar(folder, args.images)
    print(
        f"no CIFAR-10 files in {args.data_dir / 'cifar-10-batches-py'}: timing SYNTHETIC files in CIFAR-10's format "
        f"instead ({args.images} random images in {folder}; the times hold, the accuracy is chance)",
        flush=True,
    )
    args.data_dir = args.synthetic_root = folder
    return True


def run_all(runs: dict[str, list[str]], log_dir: Path, target: float) -> dict[str, dict]:
    """Runs each command in turn; its figures from its metrics.json. Exits in one line when one fails."""
    results = {}
    for name, command in runs.items():
        print(f"$ {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall_s = time.perf_counter() - started
        written = sorted((log_dir / name).rglob("metrics.json"))
        if finished.returncode != 0 or not written:
            sys.exit(
                f"error: {name} failed (exit {finished.returncode}); its output is above, its run in {log_dir / name}"
            )
        results[name] = figures(json.loads(written[-1].read_text()), wall_s, target)
    return results


def figures(metrics: dict, wall_s: float, target: float) -> dict:
    times = metrics["epoch_times_s"]
    reached = metrics["test/acc"] >= target
    return {
        "epoch_s": statistics.median(times),
        "first_epoch_s": times[0],
        "epochs": len(times),
        "training_s": sum(times),
        "time_to_target_s": sum(times) if reached else None,
        "test/acc": metrics["test/acc"],
        "startup_s": metrics.get("startup_s"),
        "wall_s": wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / "data", help="where cifar-10-batches-py is")
    parser.add_argument("--download", action="store_true", help="let train.py download CIFAR-10 (needs internet)")
    parser.add_argument(
        "--synthetic", action="store_true", help="without the CIFAR-10 files, time synthetic ones (--images)"
    )
    parser.add_argument("--images", type=int, default=10000, help="training images of the synthetic files")
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs of every run (the recipe's 30 if not given)")
    parser.add_argument("--target", type=float, default=0.93, help="the test accuracy timed")
    parser.add_argument("--log-dir", type=Path, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, after --")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    if args.dry_run:
        for command in commands(args, args.log_dir or Path(tempfile.gettempdir()) / "gpu_benchmark").values():
            print(shlex.join(command))
        return
    why = refusal(args)
    if why:
        sys.exit(why)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gpu_benchmark_"))
    if args.synthetic:
        use_synthetic_if_missing(args, log_dir / "synthetic-data")
    runs = commands(args, log_dir)

    import torch

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; runs in {log_dir}", flush=True)
    results = run_all(runs, log_dir, args.target)

    print(
        f"\nexperiment=cifar10, bf16-mixed, {torch.cuda.get_device_name(0)}: time per epoch (median; first epoch) "
        f"and time to test/acc {args.target}"
    )
    print(
        f"{'run':26s} {'s/epoch':>8s} {'first':>8s} {'to ' + str(args.target):>10s} {'test/acc':>9s} "
        f"{'start-up':>9s} {'wall':>8s}"
    )
    for name, row in results.items():
        to_target = f"{row['time_to_target_s']:.1f} s" if row["time_to_target_s"] is not None else "not reached"
        print(
            f"{name:26s} {row['epoch_s']:8.2f} {row['first_epoch_s']:8.2f} {to_target:>10s} "
            f"{row['test/acc']:9.4f} {row['startup_s'] or float('nan'):9.1f} {row['wall_s']:8.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name(0),
                    "torch": torch.__version__,
                    "target": args.target,
                    "synthetic_data": bool(getattr(args, "synthetic_root", None)),
                    "commands": runs,
                    "results": results,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
