"""The DataLoader path against data.loader=tensor, on this machine: python benchmarks/data_loading.py

Two measurements, with the cifar10 recipe's data settings (configs/experiment/cifar10.yaml: batch 512, its
num_workers for the DataLoader path, crop padding 4 and flips):

* loading: samples per second of one pass over the training split, the model left out, for each loader with the
  recipe's augmentation and without. Each loader's first pass (the DataLoader's worker processes start in it,
  persistent after) is timed apart from its second (steady) pass; the tensor path's decoding onto the device is
  timed as setup.
* epoch time: `train.py experiment=cifar10 engine=raw trainer=cpu trainer.precision=32-true` for each loader, the
  median of metrics.json epoch_times_s (training + validation), with the model (ResNet-9) in it.

The CIFAR-10 files cannot be downloaded on a machine without internet: unless the real files are under
paths.data_dir (data/cifar-10-batches-py, or --data-dir), the script writes synthetic files in CIFAR-10's format
(--images training images, a fifth as many test images, random pixels) to a temporary folder and says so. On the
real files, --images limits the epoch-time runs (trainer.limit_train_batches), not the loading pass.

Every measurement is its own process, and each repeat runs all of them in turn (loading: dataloader, tensor, each
with and without augmentation; then the epoch runs, dataloader then tensor), so that a slower period of the
machine hits all alike. Printed: medians over --repeats with the spread (min-max), the wall time and, beside it,
the CPU time of the process and its children (the DataLoader's workers included: getrusage of the children), and
the load average before and after. --json PATH writes it all. The figures are the benchmark's output, never
asserted by a test (tests/test_tensor_loader.py checks that the script runs).
"""

import argparse
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOADERS = ("dataloader", "tensor")
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def write_synthetic_cifar(root: Path, images: int) -> None:
    """CIFAR-10's layout and pickles (as torchvision reads them), random pixels: `images` training images in 5
    files, a fifth as many test images."""
    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for name in CIFAR_FILES:
        count = max(1, images // 5)
        batch = {
            "data": generator.integers(0, 256, (count, 3072), dtype=np.uint8),
            "labels": [int(label) for label in generator.integers(0, 10, count)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class {i}" for i in range(10)]}, protocol=2))


def trust_synthetic_cifar(root: Path) -> None:
    """torchvision accepts only the md5 of its own CIFAR-10 files: in this process, those of the synthetic ones."""
    import torchvision
    from torchvision.datasets.utils import calculate_md5

    folder, cifar = root / "cifar-10-batches-py", torchvision.datasets.CIFAR10
    cifar.train_list = [[name, calculate_md5(folder / name)] for name, _ in cifar.train_list]
    cifar.test_list = [[name, calculate_md5(folder / name)] for name, _ in cifar.test_list]
    cifar.meta = {**cifar.meta, "md5": calculate_md5(folder / "batches.meta")}


def real_cifar(data_dir: Path) -> bool:
    return all((data_dir / "cifar-10-batches-py" / name).is_file() for name in [*CIFAR_FILES, "batches.meta"])


def recipe(root: Path, loader: str, *overrides: str) -> list[str]:
    return [
        "experiment=cifar10",
        "trainer=cpu",
        "trainer.precision=32-true",
        f"data.root={root}",
        "data.download=false",
        f"data.loader={loader}",
        *overrides,
    ]


def child_loading(args: argparse.Namespace) -> dict:
    """One loading measurement, in this (child) process."""
    import torch

    from {{ cookiecutter.package }}.core.data import DataPipeline

    torch.set_num_threads(args.threads)
    if args.synthetic:
        trust_synthetic_cifar(args.root)
    overrides = [] if args.augment else ["data.augment.crop_padding=0", "data.augment.horizontal_flip=false"]
    cfg = compose(recipe(args.root, args.loader, *overrides))
    started = time.perf_counter()
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.setup("fit")
    loader = data.train_dataloader()
    setup_s = time.perf_counter() - started
    passes = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        samples = sum(len(targets) for _, targets in loader)
        passes.append(time.perf_counter() - started)
    return {
        "setup_s": setup_s,
        "first_pass_s": passes[0],
        "pass_s": passes[1],
        "samples": samples,
        "samples_per_s": samples / passes[1],
        "first_pass_samples_per_s": samples / passes[0],
    }


def child_epochs(args: argparse.Namespace) -> dict:
    """One epoch-time run (engine=raw), in this (child) process."""
    import contextlib
    import io

    from {{ cookiecutter.package }}.workflows.launch import train

    if args.synthetic:
        trust_synthetic_cifar(args.root)
    # The run's checkpoints are tens of MB (ResNet-9) and nothing reads them: removed with the folder.
    with tempfile.TemporaryDirectory(prefix="data_loading_run_") as run_dir:
        overrides = [
            f"trainer.max_epochs={args.epochs}",
            "trainer.enable_progress_bar=false",
            "logger=none",
            f"paths.log_dir={run_dir}",
            "engine=raw",
            "trainer.limit_test_batches=1",
        ]
        if not args.synthetic:
            overrides.append(f"trainer.limit_train_batches={max(1, args.images // 512)}")
        cfg = compose(recipe(args.root, args.loader, *overrides, *args.override))
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = train(cfg, Path(run_dir) / "run")
    times = metrics["epoch_times_s"]
    return {"epoch_times_s": times, "epoch_s": statistics.median(times), "test/acc": metrics["test/acc"]}


def spawn(args: argparse.Namespace, mode: str, loader: str, augment: bool) -> dict:
    """A child process of this script; its wall time, and its CPU time with its own children's."""
    command = [
        sys.executable,
        __file__,
        f"--child={mode}",
        f"--loader={loader}",
        f"--root={args.root}",
        f"--images={args.images}",
        f"--epochs={args.epochs}",
        f"--threads={args.threads}",
        *(["--augment"] if augment else []),
        *(["--synthetic"] if args.synthetic else []),
        *(f"--override={o}" for o in args.override),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "wall_s": wall, "cpu_s": cpu}


def spread(values: list[float]) -> dict:
    return {"per_repeat": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000, help="synthetic training images (a fifth as many test)")
    parser.add_argument("--epochs", type=int, default=2, help="of each epoch-time run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / "data", help="paths.data_dir")
    parser.add_argument("--no-epochs", action="store_true", help="loading only: no training runs")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--child", choices=("loading", "epochs"), help=argparse.SUPPRESS)
    parser.add_argument("--loader", choices=LOADERS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--augment", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", default=[], help="a train.py override for the epoch runs")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_loading(args) if args.child == "loading" else child_epochs(args)))
        return

    args.synthetic = not real_cifar(args.data_dir)
    scratch = tempfile.TemporaryDirectory(prefix="data_loading_")
    if args.synthetic:
        args.root = Path(scratch.name) / "data"
        write_synthetic_cifar(args.root, args.images)
        print(
            f"data: SYNTHETIC CIFAR-10-format files ({args.images} training images, {args.images // 5} test, "
            f"random pixels) in {args.root}: no CIFAR-10 files under {args.data_dir} (download needs internet)"
        )
    else:
        args.root = args.data_dir
        print(f"data: the real CIFAR-10 files under {args.data_dir} (epoch runs: {args.images} training images)")
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f}", flush=True)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for augment in (True, False):
            for loader in LOADERS:
                runs.setdefault(f"loading {loader} {'augmented' if augment else 'plain'}", []).append(
                    spawn(args, "loading", loader, augment)
                )
        if not args.no_epochs:
            for loader in LOADERS:
                runs.setdefault(f"epoch {loader}", []).append(spawn(args, "epochs", loader, True))
    load_after = os.getloadavg()

    figures = {}
    print(
        f"\nloading, one pass over the training split (samples {runs[next(iter(runs))][0]['samples']}, batch 512; "
        "median over repeats, min-max):"
    )
    for name, repeats in runs.items():
        if name.startswith("loading"):
            fields = {
                key: spread([run[key] for run in repeats])
                for key in ("samples_per_s", "first_pass_samples_per_s", "setup_s", "wall_s", "cpu_s")
            }
            figures[name] = fields
            rate, first = fields["samples_per_s"], fields["first_pass_samples_per_s"]
            print(
                f"  {name.removeprefix('loading '):22s} {rate['median']:9.0f} samples/s ({rate['min']:.0f}-"
                f"{rate['max']:.0f}); first pass {first['median']:.0f}/s; setup {fields['setup_s']['median']:.2f} s;"
                f" process wall {fields['wall_s']['median']:.1f} s, CPU {fields['cpu_s']['median']:.1f} s"
            )
    if not args.no_epochs:
        print(
            f"\nepoch time, experiment=cifar10 engine=raw trainer=cpu precision 32-true (median epoch of "
            f"{args.epochs}, training + validation):"
        )
        for loader in LOADERS:
            repeats = runs[f"epoch {loader}"]
            fields = {key: spread([run[key] for run in repeats]) for key in ("epoch_s", "wall_s", "cpu_s")}
            figures[f"epoch {loader}"] = fields
            epoch = fields["epoch_s"]
            print(
                f"  {loader:22s} {epoch['median']:9.2f} s/epoch ({epoch['min']:.2f}-{epoch['max']:.2f}); "
                f"process wall {fields['wall_s']['median']:.1f} s, CPU {fields['cpu_s']['median']:.1f} s"
            )
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        import torch

        args.json.write_text(
            json.dumps(
                {
                    "environment": {
                        "date": datetime.now().isoformat(timespec="seconds"),
                        "python": platform.python_version(),
                        "torch": torch.__version__,
                        "cpus": os.cpu_count(),
                        "platform": platform.platform(),
                    },
                    "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "synthetic": args.synthetic,
                    "load_average": {"before": load_before, "after": load_after},
                    "runs": runs,
                    "figures": figures,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
