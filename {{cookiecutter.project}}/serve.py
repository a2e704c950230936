"""Serve a model over HTTP: python serve.py model_path=<model.pt2|model.onnx|checkpoint> [port=8000] [host=127.0.0.1]

Hydra composes configs/serve.yaml with your overrides (src/{{ cookiecutter.package }}/workflows/serving.py).
POST an image to /predict for its class and probabilities; GET /health.
Needs the serve extra: pip install -e ".[serve]".
"""

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from {{ cookiecutter.package }}.run.rundir import register_resolvers, remove_refused_run

register_resolvers()  # hydra.run.dir: a new timestamped folder (configs/serve.yaml)


@hydra.main(version_base="1.3", config_path="configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    # Imported here, not at the top, so that `--help` and config errors answer without loading torch.
    from {{ cookiecutter.package }}.core.errors import UserError
    from {{ cookiecutter.package }}.workflows.serving import serve

    try:
        serve(cfg)
    except UserError as err:
        # a refused server leaves no folder behind
        remove_refused_run(Path(HydraConfig.get().runtime.output_dir), Path(cfg.paths.log_dir))
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: the server has finished its requests and closed (or was still starting)
        print("serve.py stopped (Ctrl-C)", file=sys.stderr, flush=True)
        # Ended by the signal, as an interrupted program ends (status 130 in a shell, so that a script stops too)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.raise_signal(signal.SIGINT)
