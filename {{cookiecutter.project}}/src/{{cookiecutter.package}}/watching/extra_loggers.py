"""logger=mlflow and logger=wandb (their libraries come with the `mlflow` and `wandb` extras), for both engines:
Lightning's MLFlowLogger and WandbLogger for engine=lightning, the classes below for engine=raw. Each run folder is
one MLflow run and one W&B run; its id is kept in the folder, so that a resume continues the same run.
"""

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # logger -> the pyproject extra that installs its library
RUN_ID_FILE = {"mlflow": "mlflow_run_id", "wandb": "wandb_run_id"}  # in the run folder: a resume continues the run
# The loggers whose params are written once: a resumed run keeps those it started with.
PARAMS_WRITTEN_ONCE = ("MLFlowLogger", "MLflow")


def run_name(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"  # <engine>/<timestamp>: the run folder, as MLflow and W&B show it


def mlflow_tracking_uri(cfg: DictConfig) -> str:
    """logger.mlflow.tracking_uri, or by default an sqlite store beside the runs (`mlflow ui` reads it)."""
    uri = cfg.logger.mlflow.tracking_uri
    return uri or f"sqlite:///{(Path(cfg.paths.log_dir) / 'mlflow.db').resolve()}"


def saved_run_id(run_dir: Path, name: str) -> str | None:
    path = run_dir / RUN_ID_FILE[name]
    return path.read_text().strip() if path.is_file() else None


def save_run_id(run_dir: Path, name: str, run_id: str) -> None:
    (run_dir / RUN_ID_FILE[name]).write_text(run_id + "\n")


def lightning_logger(name: str, cfg: DictConfig, run_dir: Path) -> Any:
    """Lightning's logger `name` (one of NAMES), writing into the run folder."""
    from lightning.pytorch import loggers as pl_loggers
    from lightning.pytorch.utilities.rank_zero import rank_zero_only  # the rank Lightning's loggers go by

    settings = cfg.logger[name]
    if name == "mlflow":
        logger = pl_loggers.MLFlowLogger(
            experiment_name=settings.experiment_name,
            run_name=run_name(run_dir),
            tracking_uri=mlflow_tracking_uri(cfg),
            run_id=saved_run_id(run_dir, name),
        )
        if rank_zero_only.rank == 0:  # on ranks > 0 Lightning's logger is a dummy that logs nothing
            save_run_id(run_dir, name, logger.run_id)  # creates the run
        return logger
    logger = pl_loggers.WandbLogger(
        project=settings.project,
        name=run_name(run_dir),
        save_dir=run_dir,
        offline=settings.mode == "offline",
        id=saved_run_id(run_dir, name),
        resume="allow",
        log_model=False,
    )
    if rank_zero_only.rank == 0:  # as above: rank 0 logs, the others do nothing
        save_run_id(run_dir, name, logger.experiment.id)
    return logger


def raw_logger(name: str, cfg: DictConfig, run_dir: Path) -> Any:
    """engine=raw's logger `name` (one of NAMES): what Lightning's would write, where it would write it."""
    return MLflow(cfg, run_dir) if name == "mlflow" else Wandb(cfg.logger[name], run_dir)


class MLflow:
    """MLFlowLogger: one MLflow run per run folder (a resume continues it), metrics with their step, the
    hyperparameters as params, the status at the end."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_tracking_uri(cfg))
        self.run_id = saved_run_id(run_dir, "mlflow")
        if self.run_id is None:
            name = cfg.logger.mlflow.experiment_name
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name(run_dir)).info.run_id
            save_run_id(run_dir, "mlflow", self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def finalize(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "success" else "FAILED")


class Wandb:
    """WandbLogger: one W&B run per run folder (a resume continues it), each log with `trainer/global_step` as
    its x-axis; offline by default (files under <run>/wandb/, `wandb sync` uploads them)."""

    def __init__(self, settings: DictConfig, run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(
            project=settings.project,
            name=run_name(run_dir),
            dir=run_dir,
            mode=settings.mode,
            id=saved_run_id(run_dir, "wandb"),
            resume="allow",
        )
        self.run.define_metric("trainer/global_step")
        self.run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        save_run_id(run_dir, "wandb", self.run.id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "trainer/global_step": step})

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def finalize(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "success" else 1)
