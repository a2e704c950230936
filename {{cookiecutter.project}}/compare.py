"""Train several engines with the same config and compare them: python compare.py [engines=[...]] [key=value ...]

Takes the same overrides as train.py (but not engine=: compare.py chooses the engines) and engines=, the engines
to train, in order: by default the whole ladder, engines=[minimal,fabric,raw,lightning]. Writes
logs/compare/<timestamp>/ with one folder per engine (each a normal train.py run folder), comparison.md (one
table: accuracy, per-step loss difference, time per epoch, start-up, memory, lines of code; each engine against the
first) and comparison.png (every engine's curves). The logic is in
src/{{ cookiecutter.package }}/workflows/comparison.py.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.run.rundir import register_resolvers
from {{ cookiecutter.package }}.workflows.comparison import check_overrides, compare, current_dir_relative

register_resolvers()  # configs/hydra/default.yaml, which compare.yaml includes, uses ${run_dir:...}


@hydra.main(version_base="1.3", config_path="configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    engines = OmegaConf.to_object(cfg.engines) if OmegaConf.is_config(cfg.get("engines")) else cfg.get("engines")
    try:
        table = compare(
            list(HydraConfig.get().overrides.task), out_dir, Path(__file__).with_name("train.py"), engines=engines
        )
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"\n{table}\n\nwritten: {current_dir_relative(out_dir / 'comparison.md')} and comparison.png beside it")


if __name__ == "__main__":
    try:  # refuse engine= and bad engines= before Hydra creates a run folder (main checks again: -m sweeps)
        check_overrides([arg for arg in sys.argv[1:] if not arg.startswith("-")])
    except UserError as err:
        sys.exit(f"error: {err}")
    main()
