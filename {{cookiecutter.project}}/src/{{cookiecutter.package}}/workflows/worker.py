"""One worker of a DDP run that train.py launched itself:
`python -m {{ cookiecutter.package }}.workflows.worker CONFIG RUN_DIR`.

distributed.launch_workers starts `trainer.devices` of these with torch elastic, as torchrun would. Each loads
the composed config from CONFIG instead of running Hydra again, joins the process group and trains into RUN_DIR
through launch.train, as a process started by torchrun does.
"""

import time

STARTED = time.perf_counter()  # metrics.json startup_s counts from the worker's own start

import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from ..core.errors import TrainingStopped, UserError  # noqa: E402
from ..run.distributed import World, launched_world, record_error  # noqa: E402
from .launch import train  # noqa: E402


def main(config_file: str, run_dir: str) -> int:
    try:
        train(OmegaConf.load(config_file), Path(run_dir), started=STARTED)
    except UserError as err:
        record_error(err)  # the launching process prints it, once for all ranks
        return 1
    except TrainingStopped as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except BaseException as err:
        record_error(err)  # the launching process prints one line for the run
        # The traceback goes to this rank's log file (ranks > 0 write there anyway), not to the terminal.
        rank = (launched_world() or World()).rank
        with (Path(run_dir) / f"rank{rank}.log").open("a") as log:
            traceback.print_exc(file=log)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
