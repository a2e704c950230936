"""No run is overwritten: a new run of train.py{% if cookiecutter.include_deployment %}, evaluate.py, export.py or predict.py{% else %} or evaluate.py{% endif %} refuses a folder that holds a
run (hydra.run.dir, or a job's folder under hydra.sweep.dir; symlinks resolved), in one line, and the old run keeps
every byte, its .hydra/ included (Hydra writes there before the tools run; KeepExistingRuns remembers it).
ckpt_path continues a run in its own folder."""

import shutil
from pathlib import Path

import pytest
from conftest import SHORT_RUN, compose_train, run_script, run_train

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.run import rundir
from {{ cookiecutter.package }}.workflows import launch

ONE_EPOCH = [*SHORT_RUN, "trainer.max_epochs=1", "engine=raw", "scheduler=none"]  # none: a resume may train on


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run trained into a folder named by hydra.run.dir: a fresh folder works."""
    folder = tmp_path_factory.mktemp("runs") / "named_run"
    result = run_train(folder.parent / "logs", *ONE_EPOCH, f"hydra.run.dir={folder}")
    assert result.returncode == 0, result.stderr
    assert (folder / "metrics.json").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
    return folder


@pytest.fixture
def old_run(finished_run, tmp_path) -> Path:
    folder = tmp_path / "old_run"
    shutil.copytree(finished_run, folder, symlinks=True)
    return folder


@pytest.mark.parametrize("via", ["folder", "symlink"])
def test_a_new_run_refuses_a_folder_that_holds_a_run(old_run, tmp_path, via):
    named = old_run if via == "folder" else tmp_path / "link"
    if via == "symlink":
        named.symlink_to(old_run, target_is_directory=True)
    before = contents(old_run)
    result = run_train(tmp_path / "logs", *ONE_EPOCH, f"hydra.run.dir={named}")
    where = str(old_run) if via == "folder" else f"{named} (the folder {old_run})"
    assert result.returncode == 1 and result.stderr.strip() == (
        f"error: hydra.run.dir: {where} already holds a run (checkpoints/best.ckpt, checkpoints/last.ckpt, "
        "metrics.json and 1 more): a new train.py run writes a folder of its own, so leave hydra.run.dir out or "
        f"name a new folder; to continue that run, give ckpt_path={old_run}/checkpoints/last.ckpt"
    ), result.stderr
    assert contents(old_run) == before  # .hydra/ and train.log included
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("script", "overrides"),
    [
        ("evaluate.py", ["ckpt_path=last"]),
        # bake: if cookiecutter.include_deployment
        ("export.py", ["ckpt_path=last"]),
        ("predict.py", ["model_path=x", "inputs=y"]),
        # bake: endif
    ],
)
def test_the_other_tools_refuse_a_folder_that_holds_a_run(old_run, tmp_path, script, overrides):
    """evaluate.py would write over metrics.json{% if cookiecutter.include_deployment %}, export.py would move the old run into its export{% endif %}."""
    link = tmp_path / "link"
    link.symlink_to(old_run, target_is_directory=True)
    before = contents(old_run)
    result = run_script(script, tmp_path / "logs", *overrides, f"hydra.run.dir={link}")
    assert result.returncode == 1 and result.stderr.strip() == (
        f"error: hydra.run.dir: {link} (the folder {old_run}) already holds a run (checkpoints/best.ckpt, "
        f"checkpoints/last.ckpt, metrics.json and 1 more): a new {script} run writes a folder of its own, so leave "
        "hydra.run.dir out or name a new folder"
    ), result.stderr
    assert contents(old_run) == before  # not even an empty evaluate.log beside train.log


@pytest.mark.slow
def test_ckpt_path_still_continues_a_run_in_its_folder(old_run, tmp_path):
    last = old_run / "checkpoints" / "last.ckpt"
    result = run_train(
        tmp_path / "logs", *ONE_EPOCH, "trainer.max_epochs=2", f"hydra.run.dir={old_run}", f"ckpt_path={last}"
    )
    assert result.returncode == 0, result.stderr
    assert f"resuming {last}" in result.stdout and '"epochs": 2' in (old_run / "metrics.json").read_text()


@pytest.mark.slow
def test_a_job_of_a_multirun_refuses_its_folder_if_it_holds_a_run(old_run, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    old_run.rename(sweep / "0_raw")
    (sweep / "multirun.yaml").write_text("the old sweep's record\n")
    before = contents(sweep)
    result = run_train(tmp_path / "logs", "-m", *ONE_EPOCH, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: hydra.sweep.dir: {sweep}/0_raw already holds a run (checkpoints/best.ckpt"
    ), result.stderr
    assert contents(sweep) == before


def test_ddp_checks_the_folder_before_any_worker_starts(old_run, monkeypatch):
    """In the launching process, before the workers: they would otherwise each write into the old run."""
    monkeypatch.setattr(launch, "launch_workers", lambda *args: pytest.fail("workers started"))
    cfg = compose_train([*ONE_EPOCH, "trainer=ddp_cpu"])
    with pytest.raises(UserError, match=f"hydra.run.dir: {old_run} already holds a run"):
        launch.train(cfg, old_run)


def test_what_counts_as_a_run(tmp_path):
    """Hydra's .hydra/ and log, and the empty folders a run prepares, are no run (under DDP every process checks
    before the processes meet); checkpoints and each tool's results file are."""
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("a: 1\n")
    (folder / "train.log").write_text("")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / ".last.ckpt.123.tmp").write_bytes(b"partial")
    (folder / "tensorboard").mkdir()
    assert rundir.run_results(folder) == []
    rundir.check_new_run_folder(folder, "train.py")
    for name in ("metrics.json", "model.json", "predictions.json", "checkpoints/epoch=0.ckpt"):
        (folder / name).write_text("{}")
        assert rundir.run_results(folder)[-1] == name or name in rundir.run_results(folder)
        with pytest.raises(UserError, match="already holds a run"):
            rundir.check_new_run_folder(folder, "evaluate.py")
        (folder / name).unlink()
