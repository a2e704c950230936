"""Export a checkpoint: python export.py ckpt_path=<file>|last [format=torch_export|onnx|all] [engine=raw|lightning]

Hydra composes configs/export.yaml with your overrides; the model comes from the checkpoint's training run
(src/{{ cookiecutter.package }}/workflows/exporting.py).
Each export writes a new logs/export/<timestamp>/ once checked.
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

register_resolvers()  # hydra.run.dir: a new timestamped folder (configs/export.yaml)


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    # Imported here, not at the top, so that `--help` and config errors answer without loading torch.
    from {{ cookiecutter.package }}.core.errors import UserError
    from {{ cookiecutter.package }}.workflows.exporting import export

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        # A folder of its own (hydra.run.dir may name an existing run): refused there, its .hydra/ stays.
        with resumed_config_kept_on_failure(run_dir):
            check_new_run_folder(run_dir, "export.py")
            export(cfg, run_dir)
    except BaseException as err:
        remove_refused_run(run_dir, Path(cfg.paths.log_dir))  # a failed export leaves no folder behind
        if not isinstance(err, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
