"""Train a model: python train.py [engine=raw|lightning] [trainer=cpu|gpu|mps] [key=value ...]

Hydra composes configs/train.yaml with your overrides; `python train.py --help` lists the options.
"""

import time

PROCESS_STARTED = {"at": time.perf_counter()}  # the first run's wall time in metrics.json includes start-up

import os  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from {{ cookiecutter.package }}.run.rundir import (  # noqa: E402
    register_resolvers,
    remove_refused_run,
    resumed_config_kept_on_failure,
)

register_resolvers()  # hydra.run.dir depends on ckpt_path: a resumed run continues in its own folder


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    # Imported here, not at the top, so that `--help` and config errors answer without loading torch.
    from {{ cookiecutter.package }}.core.errors import TrainingStopped, UserError
    from {{ cookiecutter.package }}.workflows.launch import train

    # Later jobs of a multirun (-m) are timed from their own start.
    started = PROCESS_STARTED.pop("at", None) or time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with resumed_config_kept_on_failure(run_dir):  # a failed resume leaves its run's config as it was
            metrics = train(cfg, run_dir, started=started)
    except UserError as err:
        remove_refused_run(run_dir, Path(cfg.paths.log_dir))  # a refused run leaves no folder behind
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # as Hydra's own errors: the traceback on request
            raise
        sys.exit(f"error: {err}")
    except TrainingStopped as stop:
        # The command that resumes this very run: its own overrides, and its checkpoint.
        overrides = [shlex.quote(o) for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
        resume = " ".join([*overrides, f"ckpt_path={shlex.quote(str(stop.checkpoint))}"])
        print(f"{stop}\nResume with: python train.py {resume}", file=sys.stderr)
        sys.exit(stop.exit_code)
    # What a sweeper optimises{% if cookiecutter.include_search %} (search.py reads it from metrics.json){% endif %}: the monitored validation metric of the best
    # checkpoint, `monitor` in metrics.json; never a test metric, which would tune on the test set.
    return metrics["best_score"]


if __name__ == "__main__":
    main()
