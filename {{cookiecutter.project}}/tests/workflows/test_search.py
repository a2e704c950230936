"""search.py: an Optuna study of train.py runs, scored by the monitored validation metric of each best checkpoint;
an interrupted search goes on to n_trials in the same study; a DDP trial is one study entry; a bad space is one
line before any trial."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import CONFIG_DIR, PROJECT_ROOT
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.workflows.hparam_search import check_space

TRIAL = (
    "trainer.max_epochs=1 trainer.limit_train_batches=3 trainer.limit_val_batches=2 trainer.limit_test_batches=2 "
    "logger=none trainer.enable_progress_bar=false"
)


def search(log_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "search.py", f"paths.log_dir={log_dir}", *overrides],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def study_of(log_dir: Path, name: str = "default") -> optuna.Study:
    storage = f"sqlite:///{log_dir / 'search' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_an_interrupted_search_goes_on_to_n_trials_in_the_same_study(tmp_path):
    first, output = search(tmp_path, "n_trials=4", f"train='engine=raw {TRIAL}'"), []
    deadline = time.monotonic() + 900
    for line in first.stdout:  # two trials done: stop the search (and the trial it runs) at once
        output.append(line)
        assert time.monotonic() < deadline, "".join(output)
        if line.startswith("trial 1:"):
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait(timeout=60)
    assert len(study_of(tmp_path).get_trials(states=(TrialState.COMPLETE,))) == 2, "".join(output)

    second = search(tmp_path, "n_trials=4", f"train='engine=raw {TRIAL}'")
    rest = second.communicate(timeout=900)[0]
    assert second.returncode == 0, rest
    assert "study default: 2 of 4 trials done, going on" in rest
    study = study_of(tmp_path)
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.number for t in completed][:2] == [0, 1] and len(completed) == 4
    for trial in completed:  # the score is the best checkpoint's val/acc of the trial's own run
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["monitor"] == "val/acc" and trial.value == metrics["best_score"]
        assert metrics["tags"] == ["search", "default", f"trial-{trial.number}"]
        assert metrics["engine"] == "raw"
    best = json.loads((tmp_path / "search" / "default" / "best.json").read_text())
    assert best["value"] == max(t.value for t in completed) and best["trials"] == 4
    assert best["params"] == study.best_params and set(best["params"]) >= {"optimizer", "optimizer.lr"}


@pytest.mark.slow
def test_a_ddp_trial_is_one_study_entry(tmp_path):
    run = search(tmp_path, "n_trials=1", "study_name=ddp", f"train='engine=lightning trainer=ddp_cpu {TRIAL}'")
    output = run.communicate(timeout=900)[0]
    assert run.returncode == 0, output
    [trial] = study_of(tmp_path, "ddp").get_trials()
    assert trial.state == TrialState.COMPLETE
    assert json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())["processes"] == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model.depth": {"low": 1, "high": 3}}, r"hparams_search\.params\.model\.depth is not a key of train\.py's"),
        ({"optimizer.lr": {"low": 0.1, "high": 0.01}}, r"optimizer\.lr: low=0\.1 is not below high=0\.01"),
        ({"optimizer.lr": {"low": 0.1}}, r"optimizer\.lr='low: 0\.1' is not valid: give choices"),
    ],
)
def test_a_bad_search_space_is_one_line(params, message):
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        compose(config_name="search")  # the search app's own config composes
        with pytest.raises(UserError, match=message):
            check_space(OmegaConf.create(params), ["engine=raw"])
