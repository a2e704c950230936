"""engine=raw does what the Lightning Trainer does for the same trainer config: one test per claim."""

import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from {{ cookiecutter.package }}.core.data import DataPipeline
from {{ cookiecutter.package }}.core.datasets import digits as data_module
from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.engines.raw import batch_to_device, fit, parse_precision
from {{ cookiecutter.package }}.run import checkpoint as checkpoint_module
from {{ cookiecutter.package }}.run.checkpoint import initial_model, load_checkpoint, save_checkpoint
from {{ cookiecutter.package }}.workflows.launch import seed_everything

QUICK = [
    "engine=raw",
    "trainer.enable_progress_bar=false",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
]
# No dropout or batch norm: the hand-computed reference steps below match the engine's to float precision.
PLAIN_SGD = [
    "model=mlp",
    "model.dropout=0.0",
    "optimizer=sgd",
    "optimizer.momentum=0.0",
    "optimizer.nesterov=false",
    "scheduler=none",
]


def train(tmp_path, *overrides, ckpt_path=None):
    cfg = compose_train([*QUICK, *overrides])
    seed_everything(cfg.seed)  # what launch.train does before calling the engine
    tmp_path.mkdir(parents=True, exist_ok=True)
    return cfg, fit(cfg, tmp_path, ckpt_path)


def last_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["model"]


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events.Scalars(tag)


def reference_step(cfg, batch_size, clip=None):
    """One SGD step written out by hand on the run's first batch."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.setup()
    loader = data.train_dataloader()
    loader.sampler.set_epoch(0)
    inputs, targets = next(
        iter(torch.utils.data.DataLoader(loader.dataset, batch_size=batch_size, sampler=loader.sampler))
    )
    F.cross_entropy(model(inputs), targets).backward()
    if clip:
        clip(model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p -= cfg.optimizer.lr * p.grad
    return model.state_dict()


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed"])
def test_each_cpu_precision_trains(tmp_path, precision):
    _, metrics = train(
        tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"trainer.precision={precision}"
    )
    dtype = torch.float64 if precision == "64-true" else torch.float32
    assert all(w.dtype == dtype for w in last_weights(tmp_path).values() if w.is_floating_point())
    assert metrics["global_step"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.mark.parametrize(
    ("algorithm", "clip"),
    [
        ("norm", lambda params: torch.nn.utils.clip_grad_norm_(params, 0.05)),
        ("value", lambda params: torch.nn.utils.clip_grad_value_(params, 0.001)),
    ],
)
def test_clipping_changes_the_step_as_torch_clip_grad_does(tmp_path, algorithm, clip):
    value = 0.05 if algorithm == "norm" else 0.001
    cfg, _ = train(
        tmp_path,
        *PLAIN_SGD,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        f"trainer.gradient_clip_val={value}",
        f"trainer.gradient_clip_algorithm={algorithm}",
    )
    expected = reference_step(cfg, cfg.data.batch_size, clip)
    unclipped = reference_step(cfg, cfg.data.batch_size)
    got = last_weights(tmp_path)
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    assert not all(torch.allclose(got[k], unclipped[k], atol=1e-6) for k in expected)  # clipping did bite


def test_accumulating_k_batches_equals_one_batch_k_times_larger(tmp_path):
    train(
        tmp_path / "accumulated",
        *PLAIN_SGD,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "data.batch_size=16",
        "trainer.accumulate_grad_batches=4",
    )
    cfg, _ = train(
        tmp_path / "big", *PLAIN_SGD, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "data.batch_size=64"
    )
    accumulated, big = last_weights(tmp_path / "accumulated"), last_weights(tmp_path / "big")
    assert all(torch.allclose(accumulated[k], big[k], atol=1e-6) for k in big)
    assert all(torch.allclose(big[k], v, atol=1e-6) for k, v in reference_step(cfg, 64).items())


def test_step_schedulers_step_per_optimizer_step_and_epoch_schedulers_per_epoch(tmp_path):
    _, metrics = train(
        tmp_path / "onecycle",
        "scheduler=onecycle",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=5",
        "trainer.accumulate_grad_batches=2",
    )
    state = load_checkpoint(tmp_path / "onecycle" / "checkpoints" / "last.ckpt")["scheduler"]
    assert metrics["global_step"] == 2 * 3  # ceil(5 / 2) optimizer steps per epoch
    assert state["last_epoch"] == 6 and state["total_steps"] == 6
    train(
        tmp_path / "step",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=2",
    )
    optimizer = load_checkpoint(tmp_path / "step" / "checkpoints" / "last.ckpt")["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(compose_train().optimizer.lr * 0.5**3)


def test_plateau_reads_the_monitored_metric(tmp_path):
    train(
        tmp_path,
        "scheduler=plateau",
        "scheduler.mode=max",
        "scheduler.monitor=val/loss",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=2",
    )
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["scheduler"]
    val_losses = [event.value for event in scalars(tmp_path, "val/loss")]
    assert len(val_losses) == 3 and state["last_epoch"] == 3
    assert state["best"] == pytest.approx(max(val_losses), rel=1e-6)  # mode=max over what it was given


def test_resume_is_exact(tmp_path):
    """4 epochs straight == 2 epochs, stop, resume to 4: bitwise, with shuffling, dropout and a scheduler."""
    common = [
        "model=mlp",
        "model.dropout=0.3",
        "scheduler=cosine",
        "scheduler.T_max=4",
        "trainer.limit_train_batches=6",
    ]
    train(tmp_path / "straight", *common, "trainer.max_epochs=4")
    train(tmp_path / "resumed", *common, "trainer.max_epochs=2")
    _, metrics = train(
        tmp_path / "resumed",
        *common,
        "trainer.max_epochs=4",
        ckpt_path=tmp_path / "resumed" / "checkpoints" / "last.ckpt",
    )
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert metrics["epochs"] == 4 and resumed["progress"]["global_step"] == 4 * 6
    assert straight["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()


def test_resume_refuses_the_other_engines_checkpoint(tmp_path):
    save_checkpoint({"state_dict": {}, "pytorch-lightning_version": "2"}, tmp_path / "lightning.ckpt")
    with pytest.raises(UserError, match="written by engine=lightning"):
        train(tmp_path / "run", "trainer.max_epochs=1", ckpt_path=tmp_path / "lightning.ckpt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_checkpoint({"step": 1}, path)
    good = path.read_bytes()

    def crash(*args):  # the process dies between writing the new file and renaming it into place
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "weights": torch.randn(1000)}, path)
    assert path.read_bytes() == good and load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_non_finite_inputs_stop_with_epoch_and_step_and_keep_the_last_good_state(tmp_path, monkeypatch):
    common = ["trainer.limit_train_batches=3", "scheduler=cosine"]
    train(tmp_path, *common, "trainer.max_epochs=1")
    good = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    real = data_module.load_digits_tensors
    monkeypatch.setattr(
        data_module, "load_digits_tensors", lambda: (torch.full_like(real()[0], float("nan")), real()[1])
    )
    with pytest.raises(UserError, match=r"non-finite at epoch 1, step 3: the inputs of that batch were not finite"):
        train(tmp_path, *common, "trainer.max_epochs=2", ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == good


def test_diverging_parameters_are_named(tmp_path):
    with pytest.raises(
        UserError,
        match=r"non-finite at epoch 0, step \d+: the inputs were finite; the parameters "
        r"are now not finite",
    ):
        train(
            tmp_path,
            "model=mlp",
            "optimizer=sgd",
            "optimizer.lr=1e30",
            "scheduler=none",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=10",
        )
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def tensorboard_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if type(t).__module__.startswith("tensorboard") and t.is_alive()}


@pytest.mark.parametrize(
    "overrides",
    [["optimizer.lr=1e30", "optimizer=sgd", "scheduler=none"], ["trainer.profiler=simple"]],
    ids=["a non-finite loss", "a refused profiler"],
)
def test_a_failed_run_finalizes_its_loggers(tmp_path, overrides):
    """As Lightning's Trainer on an exception: the loggers are finalized as failed, so TensorBoard's writer thread
    ends with its file complete (left open, it wrote on after its folder was gone)."""
    before = tensorboard_threads()
    with pytest.raises(UserError):
        train(tmp_path, "model=mlp", *overrides, "trainer.max_epochs=1", "trainer.limit_train_batches=10")
    assert tensorboard_threads() - before == set()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_anomaly_mode_names_the_failing_operation(tmp_path, monkeypatch):
    real = data_module.load_digits_tensors
    monkeypatch.setattr(
        data_module, "load_digits_tensors", lambda: (torch.full_like(real()[0], float("nan")), real()[1])
    )
    with pytest.raises(RuntimeError, match=r"Function '\w+Backward\d*' returned nan values"):
        train(tmp_path, "debug=anomaly", "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    torch.autograd.set_detect_anomaly(False)


def test_early_stopping_stops_and_resumes_with_its_state(tmp_path):
    _, metrics = train(
        tmp_path,
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
        "trainer.max_epochs=10",
        "trainer.limit_train_batches=2",
    )
    assert metrics["epochs"] == 2  # the first validation sets the best; the second cannot improve by 100
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["early_stopping"]
    assert state["should_stop"] and state["wait"] == 1


def test_grad_norm_is_logged_at_the_logging_cadence(tmp_path):
    train(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.log_every_n_steps=2")
    assert [e.step for e in scalars(tmp_path, "train/grad_norm")] == [1, 3]


def test_compile_keeps_state_dict_keys():
    plain = initial_model(compose_train(["model=mlp"]))
    compiled = initial_model(compose_train(["model=mlp", "compile=true"]))
    assert compiled._compiled_call_impl is not None and plain._compiled_call_impl is None
    assert compiled.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed"])
def test_batch_to_device_casts_floating_point_inputs_only(precision):
    """As Lightning's precision plugins (convert_input): float inputs take the parameter dtype, token ids keep int64."""
    device = torch.device("cpu")
    settings = parse_precision(precision, device)
    images, targets = batch_to_device((torch.rand(2, 1, 8, 8), torch.tensor([3, 1])), device, settings)
    assert images.dtype == settings.param_dtype and targets.dtype == torch.int64
    tokens, targets = batch_to_device((torch.tensor([[5, 0, 7], [1, 2, 3]]), torch.tensor([3, 1])), device, settings)
    assert tokens.dtype == torch.int64 and tokens.tolist() == [[5, 0, 7], [1, 2, 3]]
