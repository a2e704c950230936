"""The loggers of configs/logger/ (tensorboard, csv{% if cookiecutter.include_extra_loggers %}, mlflow, wandb{% endif %}; none or several), for both engines.

engine=lightning gets Lightning's own loggers (`lightning_loggers`). engine=raw gets the classes below: each writes
the same metrics at the same steps through the library's own Python API, behind Lightning's method names
(log_metrics, log_hyperparams, finalize), so that the loop calls them as Lightning's logger connector does. Both
engines log the same flat hyperparameters (summaries.hparam_values) to the loggers that have the notion.{% if cookiecutter.include_extra_loggers %}
MLflow and W&B live in extra_loggers.py.{% endif %}
"""

import csv
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..core.errors import UserError
from . import summaries

ORDER = (
    "tensorboard",  # first: its folder is Lightning's trainer.log_dir
    "csv",
    # bake: if cookiecutter.include_extra_loggers
    "mlflow",  # these two: extra_loggers.py
    "wandb",
    # bake: endif
)


def chosen(cfg: DictConfig) -> list[str]:
    """The loggers `logger=` selected, in ORDER; one line for a name no logger has."""
    names = list((cfg.get("logger") or {}).keys())
    unknown = [name for name in names if name not in ORDER]
    if unknown:
        raise UserError(
            f"logger.{unknown[0]} is not a logger: use logger= one of {', '.join(ORDER)}, none, or a "
            "list such as logger=[tensorboard,csv]"
        )
    return [name for name in ORDER if name in names]


def tensorboard_dir(cfg: DictConfig, run_dir: Path) -> Path | None:
    """<run>/<logger.tensorboard.subdir>, or None when TensorBoard is not among the loggers."""
    settings = (cfg.get("logger") or {}).get("tensorboard")
    return run_dir / settings.subdir if settings is not None else None


def log_hyperparams(loggers: list[Any], cfg: DictConfig, resumed: bool) -> None:
    """The run's settings to every logger but TensorBoard (summaries.py writes its HPARAMS tab, launch.py its
    hparams.yaml){% if cookiecutter.include_extra_loggers %}, and but MLflow on a resume (its params are written once: the run keeps those it started
    with){% endif %}; the same call for Lightning's loggers and engine=raw's."""
    values = summaries.hparam_values(cfg)
    for logger in loggers:
        kind = type(logger).__name__
        # bake: if cookiecutter.include_extra_loggers
        from .extra_loggers import PARAMS_WRITTEN_ONCE

        if resumed and kind in PARAMS_WRITTEN_ONCE:
            continue
        # bake: endif
        if kind not in ("TensorBoardLogger", "TensorBoard"):
            logger.log_hyperparams(values)


def tensorboard_writer(loggers: list[Any]) -> Any:
    """The SummaryWriter that summaries.py draws on (images, graph, histograms), or one that writes nothing."""
    for logger in loggers:
        if type(logger).__name__ in ("TensorBoardLogger", "TensorBoard"):
            return logger.experiment
    return summaries.NullWriter()


# -- engine=lightning --


def lightning_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """Lightning's loggers for `logger=`, writing into the run folder."""
    from lightning.pytorch import loggers as pl_loggers

    loggers: list[Any] = []
    for name in chosen(cfg):
        settings = cfg.logger[name]
        if name == "tensorboard":
            loggers.append(
                pl_loggers.TensorBoardLogger(
                    save_dir=run_dir, name=settings.subdir, version="", default_hp_metric=False
                )
            )
        elif name == "csv":
            loggers.append(AppendingCSVLogger(save_dir=run_dir, name=settings.subdir, version=""))
        # bake: if cookiecutter.include_extra_loggers
        else:
            from .extra_loggers import lightning_logger

            loggers.append(lightning_logger(name, cfg, run_dir))
        # bake: endif
    return loggers


def AppendingCSVLogger(**kwargs: Any) -> Any:  # noqa: N802 (a class, built on first use: lightning is imported late)
    """Lightning's CSVLogger, except that a resumed run appends to its metrics.csv: Lightning's would delete it."""
    from lightning.pytorch.loggers.csv_logs import CSVLogger, ExperimentWriter

    class KeepRows(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # instead of deleting the rows: their columns, to go on with
            rows = read_csv(Path(self.metrics_file_path))
            self.metrics_keys = sorted(rows[0]) if rows else []

    class Appending(CSVLogger):
        @property
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                self._experiment = KeepRows(log_dir=self.log_dir)
            return self._experiment

    return Appending(**kwargs)


# -- engine=raw --


def raw_loggers(cfg: DictConfig, run_dir: Path, resume_step: int) -> list[Any]:
    """engine=raw's loggers for `logger=`, writing what Lightning's would write where they would write it."""
    loggers: list[Any] = []
    for name in chosen(cfg):
        settings = cfg.logger[name]
        if name == "tensorboard":
            loggers.append(TensorBoard(run_dir / settings.subdir, resume_step))
        elif name == "csv":
            loggers.append(CSV(run_dir / settings.subdir))
        # bake: if cookiecutter.include_extra_loggers
        else:
            from .extra_loggers import raw_logger

            loggers.append(raw_logger(name, cfg, run_dir))
        # bake: endif
    return loggers


class TensorBoard:
    """TensorBoardLogger: events in <run>/tensorboard/. purge_step drops the events a crashed run logged after its
    checkpoint, so that the curves of a resumed run continue cleanly."""

    def __init__(self, folder: Path, resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.experiment = SummaryWriter(folder, purge_step=resume_step or None)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.experiment.add_scalar(name, value, step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        pass  # summaries.py writes the HPARAMS tab, launch.py hparams.yaml

    def finalize(self, status: str) -> None:
        self.experiment.close()


class CSV:
    """CSVLogger: one row per log_metrics call in <run>/csv/metrics.csv (its values and `step`; the header is
    every key so far, sorted), hparams.yaml beside it. Written through at once: nothing waits in memory."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path, self.hparams_path = folder / "metrics.csv", folder / "hparams.yaml"
        rows = read_csv(self.path)  # a resumed run goes on with its rows' columns
        self.header = sorted(rows[0]) if rows else []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {**metrics, "step": step}
        if not set(row) <= set(self.header):  # a new key: rewrite with the wider header, as Lightning does
            self.header = sorted({*self.header, *row})
            write_csv(self.path, self.header, [*read_csv(self.path), row])
            return
        with self.path.open("a", newline="") as file:  # the usual step: one row appended, nothing read
            csv.DictWriter(file, fieldnames=self.header).writerow(row)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        from omegaconf import OmegaConf

        self.hparams_path.write_text(OmegaConf.to_yaml(OmegaConf.create(params)))

    def finalize(self, status: str) -> None:
        pass


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def global_step_of(checkpoint: dict[str, Any]) -> int:
    """The optimizer steps a last.ckpt of either engine has done."""
    return checkpoint["progress"]["global_step"] if "progress" in checkpoint else checkpoint["global_step"]


def prepare_resume(cfg: DictConfig, run_dir: Path, step: int) -> None:
    """Before a resume, in both engines: metrics.csv drops the rows a crashed run logged after its checkpoint (as
    TensorBoard's purge_step does with its events), so that the resumed run's rows continue it cleanly."""
    if "csv" in chosen(cfg):
        path = run_dir / cfg.logger.csv.subdir / "metrics.csv"
        rows = read_csv(path)
        if rows:
            write_csv(path, list(rows[0]), [row for row in rows if int(row["step"]) < step])


def check_installed(cfg: DictConfig) -> None:
    """Before any work: a known logger{% if cookiecutter.include_extra_loggers %}; one whose library is missing is one line naming the extra that
    installs it{% endif %}."""
    # bake: if cookiecutter.include_extra_loggers
    from .extra_loggers import EXTRAS

    for name in chosen(cfg):
        if name in EXTRAS:
            try:
                __import__(name)
            except ImportError:
                raise UserError(f"logger={name} needs the {name} package: pip install -e '.[{EXTRAS[name]}]'") from None
    # bake: else
    chosen(cfg)  # one line for a name no logger has
    # bake: endif
