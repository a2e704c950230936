"""Predict: python predict.py model_path=<model.pt2|model.onnx|checkpoint> inputs=<image|folder|.npy> [output=<file>]

Hydra composes configs/predict.yaml with your overrides (src/{{ cookiecutter.package }}/workflows/prediction.py).
Each run prints one line per input and writes logs/predict/<timestamp>/predictions.json (or output=<file>.json|.csv).
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

register_resolvers()  # hydra.run.dir: a new timestamped folder (configs/predict.yaml)


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    # Imported here, not at the top, so that `--help` and config errors answer without loading torch.
    from {{ cookiecutter.package }}.core.errors import UserError
    from {{ cookiecutter.package }}.workflows.prediction import predict

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        # A folder of its own (hydra.run.dir may name an existing run): refused there, its .hydra/ stays.
        with resumed_config_kept_on_failure(run_dir):
            check_new_run_folder(run_dir, "predict.py")
            _, refused = predict(cfg, run_dir)
    except UserError as err:
        remove_refused_run(run_dir, Path(cfg.paths.log_dir))  # a refused prediction leaves no folder behind
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")
    if refused:  # the others were predicted and written; the status says that not all were
        sys.exit(1)


if __name__ == "__main__":
    main()
