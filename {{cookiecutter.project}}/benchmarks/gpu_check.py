"""One command that proves the project on a CUDA GPU: make gpu-check (python benchmarks/gpu_check.py [--dry-run])

In turn: the doctor (`python -m <package>.doctor --require-gpu`), the GPU tier (`pytest -m gpu`), and
benchmarks/gpu.py's runs of the cifar10 recipe (each engine, compile=false and true, bf16-mixed) on the real
CIFAR-10 files under data/ or, without them, on synthetic files in CIFAR-10's format (it says so), shortened to
--epochs epochs of --images training images, against engine=minimal, the ladder's lowest rung, on the same GPU
(in 32-true without channels_last: it implements neither; engine=fabric adds the precision).
Prints one report (versions, device, each check's result, time per epoch and samples per second) and writes it
as JSON to logs/gpu-check/<timestamp>/report.json (--out). A failed check is reported, never hides the others; the
exit status is 1 when one failed.

--dry-run, on any machine (a CPU too): the doctor without --require-gpu, the tier collected (its tests skip
without CUDA), and the benchmark on the CPU at a tiny size without compile (compiling on a CPU takes minutes);
the report marks each step skipped or shortened, and why.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import gpu  # noqa: E402  (the recipe's runs, the synthetic files)

PACKAGE = "{{ cookiecutter.package }}"
# engine=minimal under the recipe: its run keeps the recipe's data, model, optimizer and schedule, and leaves the
# settings it does not implement at their defaults (it refuses them by name otherwise).
MINIMAL_OVERRIDES = ["trainer.precision=32-true", "channels_last=false"]
VERSIONS = ("torch", "lightning", "torchvision", "torchmetrics", "hydra-core", "omegaconf", "numpy")


def versions() -> dict:
    import torch

    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["torch"] = torch.__version__  # with its build tag (+cu130, +cpu)
    found["cuda"] = torch.version.cuda
    found["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return found


def device() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"type": "cpu", "name": platform.processor() or platform.machine(), "cuda_devices": 0}
    props = torch.cuda.get_device_properties(0)
    return {
        "type": "cuda",
        "name": props.name,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda_devices": torch.cuda.device_count(),
    }


def run_step(command: list[str], timeout: float) -> dict:
    """A check's command: its exit status, time and the tail of its output (printed as it goes)."""
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as stopped:
        output, code = f"{stopped.stdout or ''}{stopped.stderr or ''}\nstopped after {timeout} s", None
    print(output[-4000:], flush=True)
    return {
        "command": command,
        "exit": code,
        "seconds": round(time.perf_counter() - started, 1),
        "tail": output[-2000:],
    }


def doctor(dry_run: bool) -> dict:
    step = run_step([sys.executable, "-m", f"{PACKAGE}.doctor", *([] if dry_run else ["--require-gpu"])], 300)
    step["result"] = "passed" if step["exit"] == 0 else "failed"
    if dry_run:
        step["note"] = "--dry-run: without --require-gpu"
    return step


def gpu_tier(out: Path, dry_run: bool) -> dict:
    """pytest -m gpu; the counts from the summary line."""
    step = run_step([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider"], 900)
    summary = step["tail"].strip().splitlines()[-1] if step["tail"].strip() else ""
    step["counts"] = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    ran_none = not step["counts"].get("passed") and not step["counts"].get("failed")
    if step["exit"] not in (0, 5) or step["counts"].get("failed") or step["counts"].get("error"):
        step["result"] = "failed"
    elif ran_none and step["counts"].get("skipped"):
        step["result"] = "skipped"
        step["note"] = "no CUDA device: every test of the tier skipped"
    else:
        step["result"] = "passed"
    return step


def samples_per_epoch(images: int | None) -> int:
    """Training samples of an epoch: CIFAR-10's 50,000 (or the synthetic files' images) less the validation tenth."""
    total = 50000 if images is None else 5 * max(1, images // 5)
    return total - round(total * 0.1)


def benchmark(args: argparse.Namespace, out: Path) -> dict:
    """The recipe's runs through benchmarks/gpu.py, engine=minimal's among them, each its own process."""
    import torch

    on_cuda = torch.cuda.is_available() and not args.dry_run
    bench = argparse.Namespace(
        data_dir=(PROJECT_ROOT / "data").resolve(),
        download=False,
        synthetic=True,
        images=args.images,
        epochs=args.epochs,
        target=0.93,
        overrides=[] if on_cuda else ["trainer=cpu", "model.channels=[8,16,32,64]", "data.batch_size=64"],
    )
    synthetic = gpu.use_synthetic_if_missing(bench, out / "synthetic-data")
    wanted = gpu.RUNS if on_cuda else [(engine, "false") for engine in ("raw", "lightning")]
    runs = gpu.commands(bench, out / "runs", wanted)
    minimal = argparse.Namespace(**{**vars(bench), "overrides": [*bench.overrides, *MINIMAL_OVERRIDES]})
    runs |= gpu.commands(minimal, out / "runs", [("minimal", "false")])
    step = {"synthetic_data": synthetic, "data_dir": str(bench.data_dir), "epochs": args.epochs, "runs": {}}
    notes = ["minimal-compile-false: engine=minimal in 32-true without channels_last (it implements neither)"]
    if not on_cuda:
        notes.insert(
            0,
            "--dry-run or no CUDA device: on the CPU, a narrow ResNet-9 (model.channels=[8,16,32,64], batch 64), "
            "compile=false only (compiling on a CPU takes minutes); the times are not GPU figures",
        )
    step["note"] = "; ".join(notes)
    samples = samples_per_epoch(args.images if synthetic else None)
    try:
        results = gpu.run_all(runs, out / "runs", bench.target)
    except SystemExit as failed:
        step.update(result="failed", error=str(failed))
        return step
    for name, row in results.items():
        step["runs"][name] = {**row, "samples_per_s": samples / row["epoch_s"]}
    step["samples_per_epoch"] = samples
    step["result"] = "passed"
    return step


def printed(report: dict) -> str:
    lines = [
        f"gpu-check {report['started']}{' (--dry-run)' if report['dry_run'] else ''}: "
        f"{report['device']['name']} ({report['device']['type']})"
    ]
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    for name, step in report["checks"].items():
        lines.append(f"{name:10s} {step['result']}" + (f"  ({step['note']})" if step.get("note") else ""))
    bench = report["checks"].get("benchmark", {})
    if bench.get("runs"):
        data = "SYNTHETIC CIFAR-10 files" if bench["synthetic_data"] else "the CIFAR-10 files"
        lines.append(
            f"cifar10 recipe, {bench['epochs']} epochs on {data}, "
            f"{bench['samples_per_epoch']} training samples per epoch:"
        )
        lines.append(f"  {'run':24s} {'s/epoch':>8s} {'first':>8s} {'samples/s':>10s}")
        for name, row in bench["runs"].items():
            lines.append(f"  {name:24s} {row['epoch_s']:8.2f} {row['first_epoch_s']:8.2f} {row['samples_per_s']:10.0f}")
    lines.append(f"report: {report['path']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: every step it can, tiny, marked")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=10000, help="training images of the synthetic files")
    parser.add_argument("--out", type=Path, help="the report's folder (default logs/gpu-check/<timestamp>)")
    args = parser.parse_args()
    if args.dry_run and args.images == 10000:
        args.images, args.epochs = 100, 1
    started = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out or PROJECT_ROOT / "logs" / "gpu-check" / started).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"started": started, "dry_run": args.dry_run, "versions": versions(), "device": device(), "checks": {}}
    report["path"] = str(out / "report.json")
    began = time.perf_counter()
    report["checks"]["doctor"] = doctor(args.dry_run)
    report["checks"]["gpu tier"] = gpu_tier(out, args.dry_run)
    report["checks"]["benchmark"] = benchmark(args, out)
    report["seconds"] = round(time.perf_counter() - began, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n" + printed(report))
    sys.exit(1 if any(step["result"] == "failed" for step in report["checks"].values()) else 0)


if __name__ == "__main__":
    main()
