"""The GPU tier: `pytest -m gpu`{% if cookiecutter.include_benchmarks %} (or `make gpu-check`, which runs it with the doctor and benchmarks/gpu.py){% endif %}. It mirrors
no module of the package: it runs the whole project on a CUDA device, what the CPU suite cannot reach (CUDA
precisions, torch.compile on the GPU, nccl, the tensor loader on the device, a GPU checkpoint read back on the CPU,
the doctor's --require-gpu). Without CUDA every test here is skipped, for one reason."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT_ROOT, SHORT_RUN, run_dirs, run_script, run_train
from in_process import train, weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU tier needs a CUDA device"),
]

ENGINES = ("raw", "lightning")
# A small model and data on the GPU: the mechanics are tested, not the speed.
ON_CUDA = ["trainer=gpu", "logger=none"]


def metrics_of(log_dir, engine) -> dict:
    return json.loads((run_dirs(log_dir, engine)[-1] / "metrics.json").read_text())


def assert_ran(result) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_trains_on_cuda_in_each_precision(tmp_path, engine, precision):
    result = run_train(tmp_path, f"engine={engine}", *ON_CUDA, f"trainer.precision={precision}", *SHORT_RUN)
    assert_ran(result)
    metrics = metrics_of(tmp_path, engine)
    assert metrics["global_step"] == 6 and metrics["peak_cuda_mb"] > 0
    assert all(torch.isfinite(torch.tensor(metrics[key])) for key in ("train/loss", "val/loss", "test/loss"))
    # The CUDA settings both engines apply by default (run/device.py): TF32 matmuls, cudnn's autotuner.
    assert metrics["matmul_precision"] == "high" and metrics["cudnn_benchmark"] is True


# Deterministic cuBLAS/cuDNN kernels give bitwise equal results for the same ops in the same order, and the engines
# run the same ops (tests/engines/test_parity.py holds them to 1e-6 on the CPU). What may differ on the GPU: where
# each engine's autocast region begins and ends, and the order in which a fused kernel sums. Over 12 steps of the
# small cnn in float32 that stays far below 1e-4 of a loss near 2; bf16 carries 8 bits of mantissa (a relative step
# of 4e-3), hence 1e-2 there. Each test prints the largest difference it saw, so that a GPU run measures it.
PARITY_TOLERANCE = {"32-true": 1e-4, "bf16-mixed": 1e-2}


@pytest.mark.parametrize("precision", sorted(PARITY_TOLERANCE))
def test_raw_and_lightning_agree_per_step_on_cuda_when_deterministic(tmp_path, precision, capsys):
    """in_process.train: trainer.deterministic=true, 2 epochs of 6 steps; the final weights carry every step."""
    overrides = ["trainer=gpu", f"trainer.precision={precision}", "logger=none"]
    metrics = {engine: train(engine, tmp_path / engine, overrides)[1] for engine in ENGINES}
    raw, lit = weights(tmp_path / "raw"), weights(tmp_path / "lightning")
    largest_weight = max((raw[key].float() - lit[key].float()).abs().max().item() for key in raw)
    compared = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc")
    largest_metric = max(abs(metrics["raw"][key] - metrics["lightning"][key]) for key in compared)
    with capsys.disabled():
        print(
            f"\n{precision}: largest raw-lightning difference: weights {largest_weight:.3g}, "
            f"metrics {largest_metric:.3g}"
        )
    assert largest_weight <= PARITY_TOLERANCE[precision] and largest_metric <= PARITY_TOLERANCE[precision]


@pytest.mark.parametrize("engine", ENGINES)
def test_compile_trains_on_cuda(tmp_path, engine):
    result = run_train(tmp_path, f"engine={engine}", *ON_CUDA, "compile=true", *SHORT_RUN, timeout=600)
    assert_ran(result)
    assert metrics_of(tmp_path, engine)["global_step"] == 6


@pytest.mark.parametrize("engine", ENGINES)
def test_ddp_on_one_gpu_with_nccl(tmp_path, engine):
    result = run_train(tmp_path, f"engine={engine}", "trainer=ddp", "trainer.devices=1", "logger=none", *SHORT_RUN)
    assert_ran(result)
    assert metrics_of(tmp_path, engine)["global_step"] == 6
    assert torch.distributed.is_nccl_available()  # trainer=ddp on CUDA: the nccl backend


def test_the_tensor_loader_keeps_the_splits_on_the_device():
    from conftest import compose_train

    from {{ cookiecutter.package }}.core.data import DataPipeline

    cfg = compose_train(["trainer=gpu", "data.loader=tensor"])
    data = DataPipeline(cfg.data, seed=cfg.seed, device="cuda")
    data.setup("fit")
    inputs, targets = next(iter(data.train_dataloader()))
    assert inputs.device.type == "cuda" and targets.device.type == "cuda"
    assert next(iter(data.val_dataloader()))[0].device.type == "cuda"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_tensor_loader_trains_on_cuda(tmp_path, engine):
    result = run_train(tmp_path, f"engine={engine}", *ON_CUDA, "data.loader=tensor", *SHORT_RUN)
    assert_ran(result)
    assert metrics_of(tmp_path, engine)["global_step"] == 6


@pytest.mark.parametrize("engine", ENGINES)
def test_a_gpu_checkpoint_goes_through_the_tools_on_the_cpu(tmp_path, engine):
    assert_ran(run_train(tmp_path, f"engine={engine}", *ON_CUDA, *SHORT_RUN))
    checkpoint = run_dirs(tmp_path, engine)[-1] / "checkpoints" / "last.ckpt"
    # bake: if cookiecutter.include_deployment
    exported = run_script("export.py", tmp_path / "export", f"ckpt_path={checkpoint}", "format=torch_export")
    assert_ran(exported)
    assert list((tmp_path / "export").rglob("*.pt2"))
    # bake: endif
    evaluated = run_script(
        "evaluate.py", tmp_path / "eval", f"ckpt_path={checkpoint}", "trainer.accelerator=cpu", f"engine={engine}"
    )
    assert_ran(evaluated)


def test_the_doctor_passes_with_require_gpu():
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package }}.doctor", "--require-gpu"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
