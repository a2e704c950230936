"""search.py's logic: an Optuna study whose trials are `python train.py` runs (configs/search.yaml).

Each trial is a process of its own, as a user would start it, so that every engine, trainer and DDP launch works
unchanged and the study gets one entry per trial, not one per rank. Its score is what train.py returns to a
sweeper: the monitored validation metric of the best checkpoint, read from the run's metrics.json.
"""

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from ..core.errors import UserError

ABSENT = object()


def quote_train_argument(argv: list[str]) -> list[str]:
    """search.py's arguments with the value of `train=` quoted for Hydra. The shell takes the quotes off
    `train='engine=raw data=mnist'`, and Hydra's grammar refuses the bare `=` and spaces left: quoted here, the line
    works as typed. A value the user quoted for Hydra already (`"train='engine=raw'"`) is left as it is."""
    quoted = []
    for argument in argv:
        key, equals, value = argument.partition("=")
        if key == "train" and equals and value[:1] not in ("'", '"'):
            # Hydra reads a backslash literally except before a quote or the closing quote: those are doubled.
            value = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, value).replace("'", "\\'")
            argument = f"train='{value}'"
        quoted.append(argument)
    return quoted


def suggest(trial: Any, params: DictConfig) -> dict[str, Any]:
    """The trial's value of each key of the search space, in the space's order."""
    values = {}
    for key, space in params.items():
        if "choices" in space:
            values[key] = trial.suggest_categorical(key, list(space.choices))
        elif space.get("int", False):
            values[key] = trial.suggest_int(key, int(space.low), int(space.high), log=space.get("log", False))
        else:
            values[key] = trial.suggest_float(key, float(space.low), float(space.high), log=space.get("log", False))
    return values


def check_space(params: DictConfig, train_overrides: list[str]) -> tuple[str, str]:
    """One line for a key of the search space that train.py does not have or a range that is empty, before any
    trial. Returns the monitor and its mode (max or min) of the trials' config."""
    cfg = compose(config_name="train", overrides=train_overrides)
    for key, space in params.items():
        if not isinstance(space, DictConfig) or not ("choices" in space or {"low", "high"} <= set(space)):
            raise UserError(
                f"hparams_search.params.{key}={OmegaConf.to_yaml(space).strip()!r} is not valid: give "
                "choices: [...] or low: and high: (with log: true, int: true if wanted)"
            )
        if "choices" not in space and not float(space.low) < float(space.high):
            raise UserError(f"hparams_search.params.{key}: low={space.low} is not below high={space.high}")
        if OmegaConf.select(cfg, key, default=ABSENT) is ABSENT:
            raise UserError(
                f"hparams_search.params.{key} is not a key of train.py's config (python train.py --cfg job lists them)"
            )
    return cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode


def run_trial(
    cfg: DictConfig, number: int, values: dict[str, Any], study_dir: Path, train_script: Path
) -> dict[str, Any]:
    """`python train.py` with the trial's values, in the study's folder; the run's metrics.json."""
    log_dir = study_dir / f"trial-{number:03d}"
    overrides = [
        *shlex.split(cfg.train),
        *(f"{key}={value}" for key, value in values.items()),
        f"paths.log_dir={log_dir}",
        f"tags=[search,{cfg.study_name},trial-{number}]",
    ]
    result = subprocess.run(
        [sys.executable, str(train_script), *overrides],
        cwd=train_script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    (study_dir / f"trial-{number:03d}.log").write_text(result.stdout)
    runs = sorted(log_dir.glob("train/*/*/metrics.json"))
    if result.returncode != 0 or not runs:
        last = result.stdout.strip().splitlines()[-1:] or ["no output"]
        raise TrialFailed(f"trial {number} failed ({' '.join(shlex.quote(o) for o in overrides)}): {last[0]}")
    return json.loads(runs[-1].read_text())


class TrialFailed(Exception):
    pass


def search(cfg: DictConfig, study_dir: Path, train_script: Path) -> dict[str, Any]:
    """Run the study to cfg.n_trials trials in all, each trial a run of `train_script` (the project's train.py);
    returns the best trial (also written to best.json)."""
    import optuna
    from optuna.trial import TrialState

    monitor, mode = check_space(cfg.hparams_search.params, shlex.split(cfg.train))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=cfg.study_name,
        storage=f"sqlite:///{study_dir.resolve() / 'study.db'}",
        sampler=optuna.samplers.TPESampler(seed=cfg.hparams_search.seed),
        direction="maximize" if mode == "max" else "minimize",
        load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # of a search that was stopped
        study.tell(stale.number, state=TrialState.FAIL)  # not counted: its trial runs again, with new values
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "failed" in t.user_attrs)
    ]
    if done:
        print(f"study {cfg.study_name}: {len(done)} of {cfg.n_trials} trials done, going on", flush=True)
    for _ in range(cfg.n_trials - len(done)):
        trial = study.ask()
        values = suggest(trial, cfg.hparams_search.params)
        try:
            metrics = run_trial(cfg, trial.number, values, study_dir, train_script)
        except TrialFailed as failed:
            trial.set_user_attr("failed", str(failed))  # counted: the same values would fail again
            study.tell(trial, state=TrialState.FAIL)
            print(failed, flush=True)
            continue
        score = metrics.get("best_score")
        if score is None or not math.isfinite(score):  # e.g. debug=fdr: no validation chose a best checkpoint
            trial.set_user_attr("failed", "no score")  # counted: the same settings would score nothing again
            study.tell(trial, state=TrialState.FAIL)
            print(
                f"trial {trial.number}: no score: its run ({metrics['run_dir']}) ended without a validated best "
                f"checkpoint, so no {monitor} to compare (debug=fdr and fast_dev_run validate none)",
                flush=True,
            )
            continue
        trial.set_user_attr("run_dir", metrics["run_dir"])
        study.tell(trial, score)
        print(
            f"trial {trial.number}: {monitor}={score:.4f} (best {study.best_value:.4f}, trial "
            f"{study.best_trial.number}) {' '.join(f'{k}={v}' for k, v in values.items())}",
            flush=True,
        )
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise UserError(f"no trial of study {cfg.study_name} completed: see {study_dir}/trial-*.log")
    best = {
        "study": cfg.study_name,
        "monitor": monitor,
        "mode": mode,
        "value": study.best_value,
        "trial": study.best_trial.number,
        "params": study.best_params,
        "run_dir": study.best_trial.user_attrs.get("run_dir"),
        "trials": len(completed),
    }
    (study_dir / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    command = " ".join([cfg.train, *(f"{k}={v}" for k, v in study.best_params.items())])
    print(f"best: {monitor}={best['value']:.4f} in trial {best['trial']}: python train.py {command}")
    return best
