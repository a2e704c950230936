"""configs/experiment/: every recipe composes, passes its checks and takes a training step (on fake copies of the
datasets it downloads), `-m 'experiment=glob(*)'` sweeps them all, and experiment=cifar10 (ResNet-9, augmentation,
label smoothing, one-cycle) trains in both engines. Plus the data augmentation and label smoothing it relies on."""

import contextlib
import io
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIG_DIR, compose_train, run_train
from datasets_on_disk import make_cifar, make_files, make_mnist

from {{ cookiecutter.package }}.core import datasets, task
from {{ cookiecutter.package }}.core.data import Augmented, DataPipeline
from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.workflows.launch import check_config, train

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def fake_dataset(name: str, root, monkeypatch) -> None:
    """Tiny files in the real format where experiment=<name> would download its dataset."""
    make_files(name, root, monkeypatch)


def compose_experiment(name: str, root, *overrides: str):
    """experiment=<name> on this machine's CPU, its data read from root without downloading."""
    return compose_train(
        [
            f"experiment={name}",
            "trainer=cpu",
            "trainer.precision=32-true",
            f"data.root={root}",
            "data.download=false",
            "data.num_workers=0",
            *overrides,
        ]
    )


def test_the_experiments_are_named_after_datasets_and_set_global_keys():
    assert EXPERIMENTS and set(EXPERIMENTS) <= set(datasets.names())  # recipes named after a registered dataset
    for name in EXPERIMENTS:
        text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n"), name  # an experiment sets keys across train.yaml


def test_a_sweep_over_glob_runs_every_experiment():
    """What `python train.py -m 'experiment=glob(*)'` expands to: one job per file of configs/experiment/."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    [override] = OverridesParser.create(config_loader=loader).parse_overrides(["experiment=glob(*)"])
    assert list(override.sweep_string_iterator()) == EXPERIMENTS


@pytest.mark.slow
def test_the_glob_sweep_runs_every_recipe_it_can_and_names_each_one_it_cannot(tmp_path):
    """`python train.py -m 'experiment=glob(*)'` (the README's line) with MNIST's files only and no download: the
    recipes whose data is there (and whose device, for cifar10 trainer=gpu) run; each other one is one `skipped`
    line naming why, leaves no folder, and the sweep goes on to the end, successfully (it stopped at the first)."""
    make_mnist(tmp_path / "data")
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    result = run_train(
        tmp_path / "logs",
        "-m",
        "experiment=glob(*)",
        "engine=raw",
        *tiny,
        "trainer.limit_test_batches=1",
        f"data.root={tmp_path / 'data'}",
        "data.download=false",
        "data.num_workers=0",
        "logger=none",
        "trainer.enable_progress_bar=false",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    skipped = {
        match.group(1): line
        for line in result.stdout.splitlines()
        if (match := re.match(r"skipped experiment=(\w+): ", line))
    }
    assert set(skipped) == {"cifar10", "fashion_mnist"}, result.stdout
    assert "the FashionMNIST files are not in" in skipped["fashion_mnist"], skipped
    trained = {json.loads(m.read_text())["tags"][0] for m in (tmp_path / "logs").rglob("metrics.json")}
    assert trained == set(EXPERIMENTS) - set(skipped)
    [sweep] = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert len([job for job in sweep.iterdir() if job.is_dir()]) == len(trained)  # a skipped job leaves no folder


def test_no_experiment_leaves_the_defaults_as_they_were():
    cfg = compose_train()
    assert cfg.tags == [] and cfg.loss.label_smoothing == 0.0
    assert (cfg.data.augment.crop_padding, cfg.data.augment.horizontal_flip) == (0, False)
    assert cfg.model._target_.endswith(".CNN") and cfg.optimizer._target_ == "torch.optim.Adam"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_takes_a_training_step(tmp_path, monkeypatch, name):
    fake_dataset(name, tmp_path, monkeypatch)
    cfg = compose_experiment(name, tmp_path)
    check_config(cfg)
    assert cfg.data.name == name and name in cfg.tags
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.prepare_data()
    data.setup()
    augments = bool(cfg.data.augment.crop_padding or cfg.data.augment.horizontal_flip)
    # data.loader=tensor (the recipes that download) augments whole batches in its loader, not in the dataset
    assert cfg.data.loader == ("tensor" if datasets.get(name).downloads else "dataloader")
    assert isinstance(data.train_set, Augmented) == (augments and cfg.data.loader == "dataloader")
    assert not isinstance(data.val_set, Augmented) and not isinstance(data.test_set, Augmented)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer, _ = task.configure_optimizers(cfg, model, total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]
    inputs, targets = next(iter(data.train_dataloader()))
    loss = task.training_step(model, (inputs[:16], targets[:16]))
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.fixture(scope="module")
def cifar10_runs(tmp_path_factory):
    """experiment=cifar10 (ResNet-9 at full width, crops, flips, label smoothing 0.2, one-cycle) for 3 batches of
    8 fake CIFAR-10 images in each engine, in float32 on the CPU: {engine: (metrics, run folder)}."""
    root = tmp_path_factory.mktemp("cifar10")
    runs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        make_cifar(root / "data", monkeypatch)
        for engine in ("raw", "lightning"):
            cfg = compose_experiment(
                "cifar10",
                root / "data",
                f"engine={engine}",
                "data.batch_size=8",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=3",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
                "trainer.log_every_n_steps=1",
                "trainer.enable_progress_bar=false",
                "trainer.deterministic=true",
            )
            with contextlib.redirect_stdout(io.StringIO()):
                runs[engine] = train(cfg, root / engine), root / engine
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_the_cifar10_experiment_trains_in_both_engines(cifar10_runs, engine):
    metrics, run_dir = cifar10_runs[engine]
    assert metrics["global_step"] == 3 and math.isfinite(metrics["train/loss"])
    assert math.isfinite(metrics["test/loss"]) and 0 <= metrics["test/acc"] <= 1
    assert json.loads((run_dir / "metrics.json").read_text())["tags"] == ["cifar10", "resnet9"]


@pytest.mark.slow
def test_the_engines_agree_with_augmentation_and_label_smoothing(cifar10_runs):
    """The same augmented batches and the same smoothed loss in both engines."""
    raw, lit = cifar10_runs["raw"][0], cifar10_runs["lightning"][0]
    assert abs(raw["train/loss"] - lit["train/loss"]) <= 1e-5 and raw["test/acc"] == lit["test/acc"]


def digits_pipeline(*overrides: str, seed: int = 0) -> DataPipeline:
    data = DataPipeline(compose_train(["data=digits", *overrides]).data, seed=seed)
    data.setup()
    return data


def test_augmentation_is_a_function_of_seed_epoch_and_index_on_the_training_split_only():
    plain = digits_pipeline()
    data = digits_pipeline("data.augment.crop_padding=2", "data.augment.horizontal_flip=true")
    assert isinstance(data.train_set, Augmented) and not isinstance(plain.train_set, Augmented)
    assert list(data.train_set.dataset.indices) == list(plain.train_set.indices)  # the same split
    assert [data.val_set.indices, data.test_set.indices] == [plain.val_set.indices, plain.test_set.indices]
    n = len(data.train_set)
    original = plain.train_set[5][0]
    epoch0, again, epoch1 = data.train_set[5][0], data.train_set[5][0], data.train_set[n + 5][0]
    assert torch.equal(epoch0, again) and not torch.equal(epoch0, epoch1)
    assert epoch0.shape == original.shape
    changed = sum(not torch.equal(data.train_set[i][0], plain.train_set[i][0]) for i in range(50))
    assert changed > 30  # 25 crop offsets x 2 flips: an image is rarely left as it was
    torch.manual_seed(1)
    state = torch.get_rng_state()
    data.train_set[7]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (dropout's) is not touched


def test_augmented_batches_do_not_depend_on_worker_processes():
    overrides = ("data.augment.crop_padding=2", "data.augment.horizontal_flip=true", "data.batch_size=32")
    batches = []
    for workers in (0, 2):
        data = digits_pipeline(*overrides, f"data.num_workers={workers}")
        loader = data.train_dataloader()
        loader.sampler.set_epoch(3)
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_label_smoothing_changes_the_training_loss_only():
    torch.manual_seed(0)
    inputs, targets = torch.randn(8, 1, 8, 8), torch.arange(8)
    losses = {}
    for smoothing in (0.0, 0.2):
        cfg = compose_train(["data=digits", f"loss.label_smoothing={smoothing}"])
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        logits = model(inputs)
        losses[smoothing] = task.training_step(model, (inputs, targets), cfg.loss.label_smoothing)
        assert torch.equal(losses[smoothing], F.cross_entropy(logits, targets, label_smoothing=smoothing))
        assert "label_smoothing" not in " ".join(model.state_dict())
        evaluation = task.evaluation_step(model, (inputs, targets))[0]
        assert torch.allclose(evaluation, F.cross_entropy(logits, targets, reduction="sum"))
    assert losses[0.0] != losses[0.2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tags=[ok,'two words']", "tags=[ok,two words] is not valid: a list of short labels"),
        ("tags=cifar10", "tags=cifar10 is not valid: a list of short labels"),
        ("data.augment.crop_padding=-1", "data.augment.crop_padding=-1 is not valid: a whole number of at least 0"),
        ("data.augment.horizontal_flip=yes", "data.augment.horizontal_flip=yes is not valid: one of true, false"),
        ("loss.label_smoothing=1.0", "loss.label_smoothing=1.0 is not valid: a fraction in [0.0, 1.0)"),
    ],
)
def test_bad_experiment_values_are_one_line(override, message):
    from {{ cookiecutter.package }}.core.errors import UserError
    from {{ cookiecutter.package }}.run.config_rules import validate

    with pytest.raises(UserError) as refused:
        validate(compose_train(["experiment=digits", override]))
    assert str(refused.value).startswith(message), str(refused.value)
