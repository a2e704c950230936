"""Every config file in configs/ composes, and every model/optimizer/scheduler config takes a real step."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIG_DIR, EXTRA_MODULES, compose_train, require_extra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from {{ cookiecutter.package }}.core.data import limit_batches
from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.core.models import build_model, check_model
from {{ cookiecutter.package }}.core.task import configure_optimizers
from {{ cookiecutter.package }}.engines import raw
from {{ cookiecutter.package }}.watching import loggers
from {{ cookiecutter.package }}.workflows.launch import check_config

PACKAGE = "{{ cookiecutter.package }}"
# bake: if cookiecutter.include_search
OTHER_GROUPS = {"hparams_search"}  # search.yaml's, composed by tests/workflows/test_search.py
# bake: else
OTHER_GROUPS: set[str] = set()  # the config groups of the other entry points
# bake: endif
# Groups that train.yaml selects one option from; hydra/ and paths/ have a single file each.
GROUP_OPTIONS = sorted(
    (group.name, path.stem)
    for group in CONFIG_DIR.iterdir()
    if group.is_dir() and group.name not in OTHER_GROUPS
    for path in group.glob("*.yaml")
)


def test_every_config_file_is_covered():
    on_disk = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")}
    covered = {f"{group}/{option}.yaml" for group, option in GROUP_OPTIONS} | {
        "train.yaml",
        "compare.yaml",  # tests/workflows/test_compare.py
        "eval.yaml",  # tests/workflows/test_evaluate.py
        # bake: if cookiecutter.include_deployment
        "export.yaml",  # tests/workflows/test_export.py
        "predict.yaml",  # tests/workflows/test_predict.py
        "serve.yaml",  # tests/workflows/test_serve.py
        # bake: endif
        # bake: if cookiecutter.include_search
        "search.yaml",  # tests/workflows/test_search.py, as hparams_search/
        "hparams_search/optuna.yaml",
        # bake: endif
        # bake: if cookiecutter.include_slurm
        "hydra/launcher/slurm.yaml",  # tests/test_slurm.py (it needs a Hydra plugin)
        # bake: endif
    }
    assert on_disk == covered


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_config_composes_and_resolves(group, option):
    cfg = compose_train([f"{group}={option}"] if group not in ("hydra",) else [])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation has a value
    assert resolved["seed"] == 42
    require_extra(*(name for name in loggers.chosen(cfg) if name in EXTRA_MODULES))  # a logger's extra: its name
    if group == "experiment" and cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        with pytest.raises(UserError, match="trainer=cpu"):  # experiment=cifar10 is a GPU recipe
            check_config(cfg)
        return
    if group == "trainer" and option in ("gpu", "cuda", "mps", "ddp"):
        available = {
            "gpu": torch.cuda.is_available(),
            "cuda": torch.cuda.is_available(),
            "mps": torch.backends.mps.is_available(),
            "ddp": torch.cuda.device_count() >= cfg.trainer.devices,
        }[option]
        if not available:
            with pytest.raises(UserError, match="trainer=(ddp_)?cpu"):
                check_config(cfg)
            return
    check_config(cfg)


MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))
SCHEDULERS = sorted(p.stem for p in (CONFIG_DIR / "scheduler").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_model_optimizer_scheduler_take_a_step(model, optimizer, scheduler):
    cfg = compose_train([f"model={model}", f"optimizer={optimizer}", f"scheduler={scheduler}"])
    torch.manual_seed(0)
    net = build_model(cfg.model)
    opt, schedule = configure_optimizers(cfg, net, total_steps=10)
    assert (schedule is None) == (scheduler == "none")
    before = [p.detach().clone() for p in net.parameters()]
    size = cfg.data.image_size
    inputs, targets = torch.randn(4, cfg.data.channels, size, size), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(net(inputs), targets)
    loss.backward()
    opt.step()
    if schedule is not None:
        lr_before = opt.param_groups[0]["lr"]
        schedule.scheduler.step(loss.item()) if schedule.monitor else schedule.scheduler.step()
        assert math.isfinite(opt.param_groups[0]["lr"]) and lr_before > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize("model", MODELS)
def test_hydra_instantiate_builds_the_model_as_build_model_does(model):
    """configs/model/*.yaml hold the _target_ and its arguments only: Hydra's own instantiate returns the module."""
    cfg = compose_train([f"model={model}"])
    torch.manual_seed(0)
    instantiated = instantiate(cfg.model)
    torch.manual_seed(0)
    built = build_model(cfg.model)
    assert type(instantiated) is type(built) and isinstance(built, torch.nn.Module)
    assert type(built).__module__.startswith(f"{PACKAGE}.core.models.")
    pairs = zip(instantiated.state_dict().values(), built.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model._target_=os.system", "model._target_=os.system is not valid: an nn.Module class of a module in"),
        ("model._target_=torch.nn.Linear", "model._target_=torch.nn.Linear is not valid: an nn.Module class"),
        (f"model._target_={PACKAGE}.core.models.build_model", "model._target_=" + PACKAGE + ".core.models.build_model"),
        ("+model.act={_target_:subprocess.run,args:[ls]}", "model.act is not valid: a model's config holds its"),
        ("+model._partial_=true", "model._partial_ is not valid: a model's config holds its _target_"),
        ("+model.width=3", "model.width=3 is not valid: " + PACKAGE + ".core.models.cnn.CNN takes no argument width"),
        ("~model.num_classes", "model.num_classes is missing: " + PACKAGE + ".core.models.cnn.CNN needs it"),
    ],
)
def test_only_the_projects_models_are_built(override, message):
    """A checkpoint's config is built by evaluate/export/predict/serve: its _target_ must be a model class of
    core/models, and the rest plain arguments of it (Hydra's instantiate would import and call anything)."""
    with pytest.raises(UserError) as refused:
        build_model(compose_train(["model=cnn", override]).model)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_model_is_checked_on_the_meta_device_without_drawing_random_numbers():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    check_model(compose_train(["model=resnet"]).model)
    assert torch.equal(torch.rand(1), expected)
    with pytest.raises(UserError, match=r"^model\.channels=\[32,0\] is not valid: a list of at least one whole"):
        check_model(compose_train(["model=resnet", "model.channels=[32,0]"]).model)


def test_onecycle_total_steps_come_from_the_data():
    cfg = compose_train(
        [
            "scheduler=onecycle",
            "trainer.max_epochs=3",
            "trainer.accumulate_grad_batches=2",
            "trainer.limit_train_batches=5",
        ]
    )
    steps = raw.estimated_stepping_batches(raw_trainer(cfg, num_batches=20))
    assert steps == 3 * math.ceil(5 / 2)
    _, schedule = configure_optimizers(cfg, torch.nn.Linear(1, 1), steps)
    assert schedule.scheduler.total_steps == steps
    capped = compose_train(["trainer.max_steps=4"])
    assert raw.estimated_stepping_batches(raw_trainer(capped, num_batches=20)) == 4


def raw_trainer(cfg, num_batches: int) -> raw.Trainer:
    """engine=raw's Trainer state as `fit` sets it up for a train loader of `num_batches`."""
    trainer = raw.Trainer(cfg, run_dir=Path("unused"))
    trainer.num_training_batches = limit_batches(num_batches, cfg.trainer.limit_train_batches)
    return trainer


@pytest.mark.parametrize(("limit", "expected"), [(None, 20), (3, 3), (50, 20), (0.5, 10), (1.0, 20)])
def test_limit_batches_follows_lightning(limit, expected):
    assert limit_batches(20, limit) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "all"])
def test_limit_batches_refuses_bad_values(bad):
    with pytest.raises(UserError, match="limit_"):
        limit_batches(20, bad)


def test_bad_values_are_named():
    with pytest.raises(UserError, match="16-mixed needs a CUDA GPU"):  # Lightning would switch to bf16 quietly
        check_config(compose_train(["engine=lightning", "trainer=cpu", "trainer.precision=16-mixed"]))
    with pytest.raises(UserError, match="trainer.accelerator='tpu'"):
        check_config(compose_train(["trainer.accelerator=tpu"]))
    with pytest.raises(UserError, match="callbacks.model_checkpoint.monitor=train/loss is not valid"):
        check_config(compose_train(["callbacks.model_checkpoint.monitor=train/loss"]))
    with pytest.raises(UserError, match="scheduler.interval='batch'"):
        cfg = compose_train(["scheduler=step", "scheduler.interval=batch"])
        configure_optimizers(cfg, torch.nn.Linear(1, 1), 10)
