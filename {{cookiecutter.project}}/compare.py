"""Train both engines with the same config and compare them: python compare.py [key=value ...]

Takes the same overrides as train.py (but not engine=: both engines always run). Writes
logs/compare/<timestamp>/ with raw/ and lightning/ (each a normal train.py run folder), comparison.md (one
table: accuracy, per-step loss difference, time per epoch, start-up, memory, lines of code) and
comparison.png (both engines' curves). The logic is in src/{{ cookiecutter.package }}/workflows/comparison.py.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.run.rundir import register_resolvers
from {{ cookiecutter.package }}.workflows.comparison import check_overrides, compare, current_dir_relative

register_resolvers()  # configs/hydra/default.yaml, which compare.yaml includes, uses ${run_dir:...}


@hydra.main(version_base="1.3", config_path="configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        table = compare(list(HydraConfig.get().overrides.task), out_dir, Path(__file__).with_name("train.py"))
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"\n{table}\n\nwritten: {current_dir_relative(out_dir / 'comparison.md')} and comparison.png beside it")


if __name__ == "__main__":
    try:  # refuse engine= before Hydra creates a run folder (main checks again: overrides may come from -m sweeps)
        check_overrides([arg for arg in sys.argv[1:] if not arg.startswith("-")])
    except UserError as err:
        sys.exit(f"error: {err}")
    main()
