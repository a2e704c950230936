"""Search hyperparameters: python search.py [n_trials=N] [study_name=NAME] [train='engine=raw ...']

Hydra composes configs/search.yaml (the space: configs/hparams_search/optuna.yaml); each trial is a `python train.py`
run scored by the monitored validation metric of its best checkpoint
(src/{{ cookiecutter.package }}/workflows/hparam_search.py).
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="search")
def main(cfg: DictConfig) -> float:
    # Imported here, not at the top, so that `--help` and config errors answer without loading optuna.
    from {{ cookiecutter.package }}.core.errors import UserError
    from {{ cookiecutter.package }}.workflows.hparam_search import search

    try:
        return search(cfg, Path(HydraConfig.get().runtime.output_dir), Path(__file__).with_name("train.py"))["value"]
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    from {{ cookiecutter.package }}.workflows.hparam_search import quote_train_argument

    sys.argv[1:] = quote_train_argument(sys.argv[1:])  # train='engine=raw ...' as the shell hands it over
    main()
