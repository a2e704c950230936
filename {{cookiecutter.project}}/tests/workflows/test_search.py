"""search.py: an Optuna study of train.py runs, scored by the monitored validation metric of each best checkpoint;
an interrupted search goes on to n_trials in the same study; a DDP trial is one study entry; a bad space is one
line before any trial."""

import json
import os
import shlex
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
from {{ cookiecutter.package }}.workflows.hparam_search import check_space, quote_train_argument
from {{ cookiecutter.package }}.workflows.hparam_search import search as run_search

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
@pytest.mark.timeout(1200)  # above its search's own 900 s
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
@pytest.mark.timeout(1200)  # above its search's own 900 s
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


# The README's search example (the template's own tests hold the README to it).
README_SEARCH_LINE = "python search.py n_trials=20 train='engine=raw'"


def readme_search_line() -> list[str]:
    """The README's search example, split as the shell splits it."""
    return shlex.split(README_SEARCH_LINE)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # above its search's own 900 s
def test_the_readmes_search_line_works_as_printed(tmp_path):
    """`python search.py n_trials=20 train='engine=raw'`: the shell hands Hydra `train=engine=raw`, which its
    grammar refused. Run as printed, with one trial and a tiny run added to the line's own train value."""
    python, script, *arguments = readme_search_line()
    assert (python, script) == ("python", "search.py") and "n_trials=20" in arguments
    arguments = ["n_trials=1" if a == "n_trials=20" else a for a in arguments]
    arguments = [f"{a} {TRIAL}" if a.startswith("train=") else a for a in arguments]  # still unquoted for Hydra
    run = search(tmp_path, *arguments)
    output = run.communicate(timeout=900)[0]
    assert run.returncode == 0, output
    [trial] = study_of(tmp_path).get_trials(states=(TrialState.COMPLETE,))
    engine = next(a for a in shlex.split(dict(a.split("=", 1) for a in arguments)["train"]) if a.startswith("engine="))
    assert json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())["engine"] == engine[7:]


@pytest.mark.parametrize(
    ("typed", "value"),
    [
        ("train=engine=raw data=mnist", "engine=raw data=mnist"),  # train='engine=raw data=mnist' in the shell
        ("train='engine=raw tags=[a,b]'", "engine=raw tags=[a,b]"),  # already quoted for Hydra: as it is
        ("train=tags=[it's] x=a\\", "tags=[it's] x=a\\"),  # quotes and backslashes survive
        ("train=", ""),
        ("n_trials=3", 3),  # other keys: untouched
    ],
)
def test_the_train_value_reaches_hydra_as_typed(typed, value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    [argument] = quote_train_argument([typed])
    assert OverridesParser.create().parse_override(argument).value() == value


# Stands in for train.py (search() takes the script to run): a run whose metrics.json has no score in trial 0 (as
# under debug=fdr) and 0.5 after.
SCORELESS_THEN_SCORED = """
import json, pathlib, sys
arguments = dict(a.split("=", 1) for a in sys.argv[1:])
run_dir = pathlib.Path(arguments["paths.log_dir"]) / "train" / "raw" / "run"
run_dir.mkdir(parents=True)
score = None if arguments["tags"].endswith("trial-0]") else 0.5
(run_dir / "metrics.json").write_text(json.dumps({"best_score": score, "run_dir": str(run_dir)}))
"""


def test_a_trial_without_a_score_is_one_line_and_the_study_goes_on(tmp_path, capsys):
    train_script = tmp_path / "train.py"
    train_script.write_text(SCORELESS_THEN_SCORED)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="search", overrides=["n_trials=2", "train='engine=raw debug=fdr'"])
        best = run_search(cfg, tmp_path, train_script)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trial 0: no score: its run (") and "debug=fdr" in lines[0]
    assert lines[1].startswith("trial 1: val/acc=0.5000") and len(lines) == 3  # and the best's line
    assert (best["trial"], best["value"], best["trials"]) == (1, 0.5, 1)


def test_a_study_whose_trials_all_end_without_a_score_is_one_line(tmp_path):
    train_script = tmp_path / "train.py"
    train_script.write_text(SCORELESS_THEN_SCORED.replace('endswith("trial-0]")', 'startswith("[search")'))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="search", overrides=["n_trials=2", "train='engine=raw debug=fdr'"])
        with pytest.raises(UserError, match=r"^no trial of study default completed: see "):
            run_search(cfg, tmp_path, train_script)
