"""What lightning_parity.py relies on below Lightning's public API still means what it is used for.

Each private attribute the parity callbacks read or write (`Lightning private` in lightning_parity.py) is exercised
here on a real Trainer, with the meaning the callbacks rely on: a Lightning release that renames or changes one fails
these tests by name, before the parity tests fail with a less telling difference.
"""

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from {{ cookiecutter.package }}.engines.lightning_parity import batches_done, request_lightning_stop

BATCHES = 6


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.validation_batches = 0

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.validation_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return loader()

    def val_dataloader(self):
        return loader()


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(BATCHES * 2, 4, generator=generator), torch.randint(0, 2, (BATCHES * 2,)))
    return DataLoader(data, batch_size=2)


def trainer(callback: L.Callback, **arguments) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **arguments,
    )


class StopAfterBatch(L.Callback):
    def __init__(self, batch: int, hold_validation: bool = False) -> None:
        self.batch, self.hold_validation = batch, hold_validation

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.batch:
            request_lightning_stop(trainer, True)

    def on_validation_start(self, trainer, module):
        if self.hold_validation and trainer.received_sigterm:
            request_lightning_stop(trainer, False)

    def on_validation_end(self, trainer, module):
        if self.hold_validation:
            request_lightning_stop(trainer, True)


def test_a_stop_request_stops_once_the_step_is_counted():
    """`trainer._signal_connector.received_sigterm`: set after a batch, the fit loop raises SIGTERMException once
    that optimizer step is counted, and the public `trainer.received_sigterm` reads the same flag."""
    stopping = trainer(StopAfterBatch(batch=2))
    with pytest.raises(SIGTERMException):
        stopping.fit(Tiny())
    assert stopping.received_sigterm
    assert (stopping.current_epoch, stopping.global_step, batches_done(stopping)) == (0, 3, 3)


def test_a_stop_request_in_a_validation_cuts_it_unless_held():
    """SaveOnStop holds the request while a validation runs (engine=raw finishes it): the flag set when the
    validation starts stops it after its first batch; cleared at its start and set at its end, the validation runs
    to its end and the run then stops at the same step."""
    for hold, validated in ((False, 1), (True, BATCHES)):
        module = Tiny()
        stopping = trainer(StopAfterBatch(batch=2, hold_validation=hold), val_check_interval=3)
        with pytest.raises(SIGTERMException):
            stopping.fit(module)
        assert (stopping.global_step, module.validation_batches) == (3, validated)


class RecordBatchesDone(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def on_validation_end(self, trainer, module):
        self.seen.append(("validation", trainer.global_step, batches_done(trainer)))

    def on_train_epoch_end(self, trainer, module):
        self.seen.append(("epoch end", trainer.global_step, batches_done(trainer)))


def test_batches_done_counts_the_epochs_batches_where_checkpoints_are_written():
    """`trainer.fit_loop.epoch_loop.batch_progress.current.completed`: in a validation (where ModelCheckpoint and
    SaveOnStop write) it counts the batches of the epoch trained, the current one included; at the epoch's end,
    modulo the epoch's batches, 0: the next epoch starts from its first batch."""
    record = RecordBatchesDone()
    trainer(record, val_check_interval=2).fit(Tiny())
    assert record.seen == [
        ("validation", 2, 2),
        ("validation", 4, 4),
        ("validation", 6, 0),
        ("epoch end", 6, 0),
        ("validation", 8, 2),
        ("validation", 10, 4),
        ("validation", 12, 0),
        ("epoch end", 12, 0),
    ]
