"""Evaluate a checkpoint: python evaluate.py ckpt_path=<file>|last [engine=raw|lightning] [split=test|val] [key=value]

Hydra composes configs/eval.yaml with your overrides; the model and data settings come from the checkpoint's
training run (src/{{ cookiecutter.package }}/workflows/evaluation.py).
Each evaluation writes a new logs/eval/<timestamp>/.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from {{ cookiecutter.package }}.run.rundir import (
    check_new_run_folder,
    register_resolvers,
    remove_refused_run,
    resumed_config_kept_on_failure,
)

register_resolvers()  # hydra.run.dir: a new timestamped folder (configs/eval.yaml)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float:
    # Imported here, not at the top, so that `--help` and config errors answer without loading torch.
    from {{ cookiecutter.package }}.core.errors import UserError
    from {{ cookiecutter.package }}.workflows.evaluation import evaluate

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        # A folder of its own (hydra.run.dir may name an existing run): refused there, its .hydra/ stays.
        with resumed_config_kept_on_failure(run_dir):
            check_new_run_folder(run_dir, "evaluate.py")
            metrics = evaluate(cfg, run_dir, overrides=list(HydraConfig.get().overrides.task))
    except UserError as err:
        remove_refused_run(run_dir, Path(cfg.paths.log_dir))  # a refused evaluation leaves no folder behind
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")
    return metrics[f"{metrics['split']}/acc"]


if __name__ == "__main__":
    main()
