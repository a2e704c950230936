"""The CUDA speed settings (run/device.py): resolved from the config alike for both engines, applied, refused in
the one combination that cannot work, and recorded in metrics.json. What a CPU can show; the GPU tier runs them."""

import os

import pytest
import torch
from conftest import compose_train
from in_process import train
from lightning.pytorch.trainer.connectors.accelerator_connector import _set_torch_flags

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.engines import lightning as lightning_engine
from {{ cookiecutter.package }}.engines import raw as raw_engine
from {{ cookiecutter.package }}.run import device
from {{ cookiecutter.package }}.workflows.launch import check_config

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.fixture(autouse=True)
def torch_flags_restored():
    """The settings are process-wide: each test leaves them as it found them."""
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.benchmark = saved[1]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def test_on_cuda_the_defaults_are_tf32_the_autotuner_and_the_recipe_s_memory_format():
    settings = device.resolve(compose_train(["experiment=cifar10"]), cuda=True)
    assert settings == device.DeviceSettings(matmul_precision="high", benchmark=True, channels_last=True)
    assert device.resolve(compose_train(), cuda=True).channels_last is False  # the default model: off unless asked


def test_off_cuda_nothing_is_changed():
    settings = device.resolve(compose_train(["experiment=cifar10", "trainer=cpu"]), cuda=False)
    assert settings == device.DeviceSettings(matmul_precision=None, benchmark=None, channels_last=False)
    assert device.resolve(compose_train(["matmul_precision=medium"]), cuda=False).matmul_precision == "medium"


def test_deterministic_turns_the_autotuner_off_and_refuses_it_by_name():
    assert device.resolve(compose_train(["trainer.deterministic=true"]), cuda=True).benchmark is False
    assert device.resolve(compose_train(["trainer.benchmark=false"]), cuda=True).benchmark is False
    assert device.resolve(compose_train(["matmul_precision=highest"]), cuda=True).matmul_precision == "highest"
    cfg = compose_train(["trainer.deterministic=true", "trainer.benchmark=true"])
    with pytest.raises(UserError, match=r"^trainer.benchmark=true with trainer.deterministic=true is not valid"):
        check_config(cfg)  # before the run starts


@pytest.mark.parametrize(
    ("override", "accepted"),
    [
        ("matmul_precision=low", "null .*, highest, high or medium"),
        ("trainer.benchmark=sometimes", "null .*, true or false"),
        ("channels_last=yes", "one of true, false"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(override, accepted):
    with pytest.raises(UserError, match=rf"^{override} is not valid: {accepted}"):
        check_config(compose_train([override]))


@pytest.mark.parametrize("deterministic", [False, True, "warn"])
@pytest.mark.parametrize("benchmark", [None, False, True])
def test_engine_raw_sets_the_torch_flags_as_lightning_does(deterministic, benchmark):
    if deterministic and benchmark:
        return  # refused by both engines (above)
    flags = []
    for set_flags in (
        lambda: _set_torch_flags(deterministic=deterministic, benchmark=benchmark),
        lambda: raw_engine.set_deterministic(deterministic, benchmark),
    ):
        torch.backends.cudnn.benchmark = True  # a value either may keep or change
        torch.use_deterministic_algorithms(False)
        set_flags()
        flags.append(
            (
                torch.backends.cudnn.benchmark,
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            )
        )
    assert flags[0] == flags[1]


def test_lightning_gets_the_resolved_benchmark():
    assert lightning_engine.trainer_arguments(compose_train())["benchmark"] is None  # on the CPU: left alone
    cuda = ["trainer.accelerator=cuda"]
    assert lightning_engine.trainer_arguments(compose_train(cuda))["benchmark"] is True
    assert (
        lightning_engine.trainer_arguments(compose_train([*cuda, "trainer.deterministic=true"]))["benchmark"] is False
    )


def test_on_cuda_auto_and_gpu_and_cuda_name_the_same_device(monkeypatch):
    assert device.on_cuda("cuda") and device.on_cuda("gpu") and not device.on_cuda("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.on_cuda("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not device.on_cuda("auto")


def test_the_lightning_datamodule_hook_converts_batches_as_batch_to_device():
    """DataPipeline.on_after_batch_transfer, which Lightning calls on its DataModule: the same memory format."""
    images, labels = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    pipeline = lightning_engine.DataModule(compose_train().data, seed=0)
    plain = pipeline.on_after_batch_transfer((images, labels), 0)
    assert plain[0] is images and plain[1] is labels
    pipeline.channels_last = True
    converted, same_labels = pipeline.on_after_batch_transfer((images, labels), 0)
    assert converted.is_contiguous(memory_format=torch.channels_last) and torch.equal(converted, images)
    assert same_labels is labels
    tokens = torch.tensor([[5, 0, 7], [1, 2, 3]])
    assert pipeline.on_after_batch_transfer((tokens, labels), 0)[0] is tokens


def test_batches_go_to_the_device_in_the_memory_format_asked_for():
    precision = raw_engine.parse_precision("32-true", torch.device("cpu"))
    images = torch.rand(2, 3, 4, 4)
    moved, _ = raw_engine.batch_to_device((images, torch.tensor([0, 1])), torch.device("cpu"), precision, True)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, images)
    plain, _ = raw_engine.batch_to_device((images, torch.tensor([0, 1])), torch.device("cpu"), precision)
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)
    tokens = torch.tensor([[5, 0, 7], [1, 2, 3]])  # not images: as they are
    assert (
        raw_engine.batch_to_device((tokens, torch.tensor([0, 1])), torch.device("cpu"), precision, True)[0].dim() == 2
    )


@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_each_engine_applies_and_records_the_settings(engine, tmp_path):
    torch.set_float32_matmul_precision("highest")
    _, results = train(engine, tmp_path / "medium", [*SHORT, "matmul_precision=medium", "channels_last=true"])
    assert torch.get_float32_matmul_precision() == "medium"
    assert results["matmul_precision"] == "medium"
    assert results["channels_last"] is False  # on the CPU it does nothing, and says so
    assert results["pin_memory"] is False  # data=digits does not pin
    assert results["cudnn_benchmark"] is False  # trainer.deterministic (in_process.BASE): off
    _, default = train(engine, tmp_path / "default", SHORT)
    assert default["matmul_precision"] == "medium"  # null off CUDA: torch's setting left as it is


def test_both_engines_record_the_same_settings(tmp_path):
    recorded = []
    for engine in ("raw", "lightning"):
        _, results = train(engine, tmp_path / engine, [*SHORT, "trainer.deterministic=false"])
        recorded.append({k: results[k] for k in ("matmul_precision", "cudnn_benchmark", "channels_last", "pin_memory")})
    assert recorded[0] == recorded[1]
