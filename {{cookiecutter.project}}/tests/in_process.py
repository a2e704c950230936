"""Both engines' `fit`, called in this process as launch.train calls it (the seed first), for the tests that compare
them number for number."""

import contextlib
import io

from conftest import compose_train

from {{ cookiecutter.package }}.engines import fabric as fabric_engine
from {{ cookiecutter.package }}.engines import lightning as lightning_engine
from {{ cookiecutter.package }}.engines import minimal as minimal_engine
from {{ cookiecutter.package }}.engines import raw as raw_engine
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, model_state_dict
from {{ cookiecutter.package }}.workflows.launch import seed_everything

ENGINES = {"raw": raw_engine.fit, "lightning": lightning_engine.fit}
BASE = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
]


def train(engine, run_dir, overrides, ckpt_path=None):
    keys = {override.split("=")[0] for override in overrides}
    cfg = compose_train([f"engine={engine}", *(o for o in BASE if o.split("=")[0] not in keys), *overrides])
    seed_everything(cfg.seed)  # what launch.train does before either engine
    with contextlib.redirect_stdout(io.StringIO()):
        return cfg, ENGINES[engine](cfg, run_dir, ckpt_path)


# The ladder's four rungs (tests/engines/test_ladder.py), on runs that limit nothing but the epochs: engine=minimal
# and engine=fabric refuse limit_*_batches.
RUNGS = {"minimal": minimal_engine.fit, "fabric": fabric_engine.fit, **ENGINES}
RUNG_BASE = ["trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"]


def train_rung(engine, run_dir, overrides=(), ckpt_path=None):
    """`train` for any rung of the ladder, from RUNG_BASE."""
    keys = {override.split("=")[0] for override in overrides}
    cfg = compose_train([f"engine={engine}", *(o for o in RUNG_BASE if o.split("=")[0] not in keys), *overrides])
    seed_everything(cfg.seed)
    with contextlib.redirect_stdout(io.StringIO()):
        return cfg, RUNGS[engine](cfg, run_dir, ckpt_path)


def weights(run_dir, name="last.ckpt"):
    return model_state_dict(load_checkpoint(run_dir / "checkpoints" / name))
