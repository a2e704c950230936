"""Every bad config value gets one line, before any work, in both engines (validation.py), and leaves nothing."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import PROJECT_ROOT, SHORT_RUN, compose_train, run_dirs

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.run.config_rules import RULES
from {{ cookiecutter.package }}.workflows.launch import train

# (overrides, the start of the one line). Each was once a traceback, or silently accepted and wrong.
BAD_VALUES = [
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not valid: a whole number of at least 1"),
    (["trainer.max_epochs=-1", "trainer.max_steps=30"], "trainer.max_epochs=-1 is not valid"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is not valid: -1 (no limit) or a whole number"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 is not valid: null (no clipping) or a number"),
    (["trainer.gradient_clip_algorithm=foo"], "trainer.gradient_clip_algorithm=foo is not valid: one of norm, value"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5 is not valid: null (all), a whole"),
    (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 is not valid"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is not valid"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 is not valid"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is not valid"),
    (["trainer.deterministic=maybe"], "trainer.deterministic=maybe is not valid: one of true, false, warn"),
    (["trainer.precision=8"], "trainer.precision=8 is not valid: one of 32-true, 64-true, bf16-mixed, 16-mixed"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0 is not valid: a whole number of at least 1"),
    (["trainer.devices=0"], "trainer.devices=0 is not valid: a whole number of at least 1, -1 or auto"),
    (["trainer.enable_progress_bar=sometimes"], "trainer.enable_progress_bar=sometimes is not valid: one of true"),
    (["seed=abc"], "seed=abc is not valid: a whole number of at least 0, or null"),
    (["seed=-1"], "seed=-1 is not valid"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is not valid: a number above 0"),
    (["optimizer.lr=abc"], "optimizer.lr=abc is not valid: a number above 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is not valid: a number above 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 is not valid: a number of at least 0"),
    (["optimizer=sgd", "optimizer.momentum=-0.5"], "optimizer.momentum=-0.5 is not valid"),
    (["data.batch_size=0"], "data.batch_size=0 is not valid: a whole number of at least 1"),
    (["data.batch_size=-3"], "data.batch_size=-3 is not valid"),
    (["data.num_workers=-1"], "data.num_workers=-1 is not valid: a whole number of at least 0"),
    (["data.loader=gpu"], "data.loader=gpu is not valid: one of dataloader, tensor"),
    (["data.num_classes=1"], "data.num_classes=1 is not valid: a whole number of at least 2"),
    (["data.val_fraction=-0.1"], "data.val_fraction=-0.1 is not valid: a fraction in (0.0, 1.0)"),
    (
        ["data=digits", "data.val_fraction=0.6", "data.test_fraction=0.5"],  # test images in the training set
        "data.val_fraction=0.6 with data.test_fraction=0.5 is not valid: the two must add up to less than 1",
    ),
    (["model=cnn", "model.channels=[]"], "model.channels=[] is not valid: a list of at least one whole number"),
    (["model=mlp", "model.hidden=[0]"], "model.hidden=[0] is not valid"),
    (["model.dropout=1.5"], "model.dropout=1.5 is not valid: a probability in [0.0, 1.0)"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 is not valid: a whole number of at least 1"),
    (["scheduler=step", "scheduler.interval=batch"], "scheduler.interval=batch is not valid: one of step, epoch"),
    (["scheduler=plateau", "scheduler.mode=up"], "scheduler.mode=up is not valid: one of min, max"),
    (
        ["callbacks=early_stopping", "callbacks.early_stopping.patience=-1"],
        "callbacks.early_stopping.patience=-1 is not valid: a whole number of at least 0",
    ),
    (
        ["callbacks=early_stopping", "callbacks.early_stopping.mode=foo"],
        "callbacks.early_stopping.mode=foo is not valid: one of min, max",
    ),
    (
        ["callbacks.model_checkpoint.monitor=train/loss"],
        "callbacks.model_checkpoint.monitor=train/loss is not valid: one of val/acc, val/loss",
    ),
    (["distributed.timeout_s=0"], "distributed.timeout_s=0 is not valid: a number above 0"),
]


@pytest.mark.parametrize("engine", ["raw", "lightning"])
@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_before_any_work(tmp_path, engine, overrides, message):
    with pytest.raises(UserError) as refused:
        train(compose_train([f"engine={engine}", *overrides]), tmp_path / "run")
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_every_rule_names_a_key_of_the_configs():
    """Each rule's key exists in some config of configs/ (a rule for a renamed key would check nothing)."""
    from omegaconf import OmegaConf

    from {{ cookiecutter.package }}.run.config_rules import ABSENT

    groups = {
        "optimizer": ["sgd", "adam", "rmsprop"],
        "scheduler": ["step", "cosine", "onecycle", "plateau"],
        "model": ["mlp", "cnn"],
        "callbacks": ["early_stopping"],
    }
    configs = [compose_train()] + [
        compose_train([f"{group}={option}"]) for group, options in groups.items() for option in options
    ]
    for key in RULES:
        assert any(OmegaConf.select(cfg, key, default=ABSENT) is not ABSENT for cfg in configs), key


def test_the_defaults_and_every_config_option_pass(tmp_path):
    from {{ cookiecutter.package }}.run.config_rules import validate

    for overrides in (
        [],
        ["optimizer=sgd"],
        ["optimizer=rmsprop"],
        ["scheduler=step"],
        ["scheduler=plateau"],
        ["scheduler=cosine"],
        ["model=mlp"],
        ["callbacks=early_stopping"],
        ["trainer=ddp_cpu"],
        ["data=mnist"],
        ["data=cifar10"],
        ["seed=null"],
        ["trainer.devices=auto"],
    ):
        validate(compose_train(overrides))


@pytest.mark.slow
def test_a_refused_run_leaves_no_run_folder_and_no_traceback(log_dir):
    result = subprocess.run(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", "engine=raw", "data.batch_size=0"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: data.batch_size=0 is not valid: a whole number of at least 1"]
    assert not log_dir.exists()  # not even the empty folders above the run's
    full = subprocess.run(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", "data.batch_size=0"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode == 1 and "Traceback" in full.stderr and "data.batch_size=0 is not valid" in full.stderr


@pytest.mark.slow
def test_seed_null_draws_a_seed_and_records_it(log_dir):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"paths.log_dir={log_dir}",
            "engine=raw",
            "seed=null",
            *SHORT_RUN,
            "trainer.max_epochs=1",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(log_dir, "raw")
    seed = json.loads((run_dir / "metrics.json").read_text())["seed"]
    assert isinstance(seed, int) and seed >= 0 and f"seed=null: this run's seed is {seed}" in result.stdout


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A last.ckpt and best.ckpt of each engine, from two epochs of two batches of model=mlp."""
    import contextlib
    import io

    from {{ cookiecutter.package }}.engines import lightning, raw
    from {{ cookiecutter.package }}.workflows.launch import seed_everything

    folder = tmp_path_factory.mktemp("checkpoints")
    for engine, fit in (("raw", raw.fit), ("lightning", lightning.fit)):
        cfg = compose_train(
            [f"engine={engine}", "model=mlp", "scheduler=cosine", *SHORT_RUN, "trainer.limit_train_batches=2"]
        )
        seed_everything(cfg.seed)
        with contextlib.redirect_stdout(io.StringIO()):
            fit(cfg, folder / engine)
    return folder


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def bad_checkpoint(kind: str, checkpoints, folder):
    """A file that must not resume an mlp run of engine=raw: (path, the start of the expected line)."""
    import torch

    path = folder / f"{kind}.ckpt"
    good = (checkpoints / "raw" / "checkpoints" / "last.ckpt").read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 40)
    elif kind == "text":
        path.write_text("model weights go here\n")
    elif kind == "malicious pickle":
        torch.save({"engine": "raw", "model": Payload()}, path)
    elif kind == "a foreign dictionary":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "not a dictionary":
        torch.save([1, 2, 3], path)
    else:
        return {
            "the other engine's": checkpoints / "lightning" / "checkpoints" / "last.ckpt",
            "best weights only": checkpoints / "raw" / "checkpoints" / "best.ckpt",
        }[kind]
    return path


RESUME_REFUSALS = {
    **dict.fromkeys(("empty", "truncated", "random bytes", "text", "malicious pickle"), "cannot be loaded safely"),
    "a foreign dictionary": "is not a checkpoint of either engine",
    "not a dictionary": "holds a list",
    "the other engine's": "was written by engine=lightning",
    "best weights only": "holds only the best weights",
}


@pytest.mark.parametrize("kind", RESUME_REFUSALS)
def test_a_checkpoint_that_cannot_resume_the_run_is_one_line_before_any_work(checkpoints, tmp_path, kind, capsys):
    path = bad_checkpoint(kind, checkpoints, tmp_path)
    with pytest.raises(UserError) as refused:
        train(compose_train(["engine=raw", "model=mlp", f"ckpt_path={path}"]), tmp_path / "run")
    assert RESUME_REFUSALS[kind] in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    assert "this ran while loading" not in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_resuming_another_architecture_names_the_mismatched_keys_in_both_engines(checkpoints, tmp_path, engine):
    last = checkpoints / engine / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(
        UserError,
        match=r"holds the weights of another model \(missing features\.0\.bias, "
        r"features\.0\.weight, features\.1\.bias \.\.\.; unexpected net\.1\.bias",
    ):
        train(compose_train([f"engine={engine}", "model=cnn", f"ckpt_path={last}"]), tmp_path / "run")
    cross = {"raw": "lightning", "lightning": "raw"}[engine]
    with pytest.raises(UserError, match=f"was written by engine={cross}"):
        train(
            compose_train(
                [f"engine={engine}", "model=mlp", f"ckpt_path={checkpoints / cross / 'checkpoints'}/last.ckpt"]
            ),
            tmp_path / "run",
        )
    assert last.read_bytes() == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("engine", ["raw", "lightning"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_fraction_of_batches_that_leaves_none_is_one_line_before_training(tmp_path, engine, split):
    """The limit depends on the split's size: refused once the data is split, before the first step."""
    with pytest.raises(UserError) as refused:
        train(compose_train([f"engine={engine}", f"trainer.limit_{split}_batches=0.001"]), tmp_path / "run")
    assert str(refused.value).startswith(f"trainer.limit_{split}_batches=0.001 is not valid here: 0.001 of the ")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_data_loader_workers_with_a_too_long_tmpdir_are_one_line_before_any_work(tmp_path, engine, monkeypatch):
    """Their socket's folder stood in for: the one line names TMPDIR, its length and the longest that works."""
    import multiprocessing.util

    long_tmpdir = "/" + "t" * 99
    monkeypatch.setattr(multiprocessing.util, "get_temp_dir", lambda: f"{long_tmpdir}/pymp-abcdefgh")
    with pytest.raises(UserError) as refused:
        train(compose_train([f"engine={engine}", "data.num_workers=2"]), tmp_path / "run")
    assert str(refused.value) == (
        f"data.num_workers=2 is not valid with TMPDIR={long_tmpdir} (100 characters): the DataLoader workers' "
        "socket would be 132 characters, over the 107 a socket path may have; set TMPDIR to a folder of at most "
        "75 characters, or data.num_workers=0"
    )
    assert not (tmp_path / "run").exists()
    from {{ cookiecutter.package }}.workflows.launch import check_config

    for accepted in (["data.num_workers=0"], ["data.num_workers=2", "data.loader=tensor"]):  # no workers, no socket
        check_config(compose_train(accepted))


SOCKET_PROBE = """
import multiprocessing.connection
from omegaconf import OmegaConf
from {{ cookiecutter.package }}.core.data import check_worker_socket
from {{ cookiecutter.package }}.core.errors import UserError
try:
    check_worker_socket(OmegaConf.create({"loader": "dataloader", "num_workers": 1}))
    verdict = "accepted"
except UserError:
    verdict = "refused"
try:  # the socket each DataLoader worker makes to hand a batch over (multiprocessing.resource_sharer)
    multiprocessing.connection.Listener(family="AF_UNIX").close()
    socket = "binds"
except OSError:
    socket = "fails"
print(verdict, socket)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the workers' socket (file_descriptor sharing) is Linux's"
)
@pytest.mark.parametrize("length", [75, 76])  # the longest TMPDIR that works here, and one more character
def test_the_tmpdir_check_refuses_exactly_when_the_workers_socket_cannot_be_made(length):
    base = tempfile.mkdtemp(prefix="sock-", dir="/tmp")  # pytest's own tmp_path may be longer than `length`
    try:
        tmpdir = os.path.join(base, "x" * (length - len(base) - 1))
        os.mkdir(tmpdir)
        result = subprocess.run(
            [sys.executable, "-c", SOCKET_PROBE],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TMPDIR": tmpdir},
        )
    finally:
        shutil.rmtree(base)
    assert result.returncode == 0, result.stderr
    verdict, socket = result.stdout.split()
    assert (verdict, socket) in (("accepted", "binds"), ("refused", "fails")), (length, verdict, socket)


@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_weights_from_starts_a_new_run_from_the_other_engines_weights(checkpoints, tmp_path, engine):
    """weights_from: the other engine's best.ckpt as first weights, under a OneCycleLR planned for this run's steps
    (what ckpt_path refuses); with a learning rate of ~0 the run ends where the checkpoint was."""
    import contextlib
    import io

    import torch

    from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, model_state_dict

    source = checkpoints / ("lightning" if engine == "raw" else "raw") / "checkpoints" / "best.ckpt"
    cfg = compose_train(
        [
            f"engine={engine}",
            "model=mlp",
            "scheduler=onecycle",
            "optimizer.lr=1e-12",
            *SHORT_RUN,
            "trainer.max_epochs=1",
            f"weights_from={source}",
        ]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = train(cfg, tmp_path / "run")
    assert (metrics["weights_from"], metrics["epochs"], metrics["global_step"]) == (str(source), 1, 3)
    start, end = (
        model_state_dict(load_checkpoint(source)),
        model_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")),
    )
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start if k in end)


def test_weights_from_refusals_are_one_line_before_any_work(checkpoints, tmp_path):
    last = checkpoints / "raw" / "checkpoints" / "last.ckpt"
    for overrides, message in [
        ([f"weights_from={last}", f"ckpt_path={last}", "model=mlp"], "ckpt_path and weights_from are both set"),
        ([f"weights_from={last}", "model=cnn"], f"weights_from={last} holds the weights of another model (missing"),
        (["weights_from=last"], f"weights_from=last: no run under {tmp_path}/logs has checkpoints/last.ckpt"),
    ]:
        with pytest.raises(UserError) as refused:
            train(compose_train(["engine=raw", *overrides]), tmp_path / "logs" / "run")
        assert str(refused.value).startswith(message), str(refused.value)
        assert not (tmp_path / "logs" / "run").exists()
