"""Inputs that are not floating point (token ids) keep their dtype on the way to the device in both engines, as
Lightning's precision plugins do (convert_input casts floating-point tensors only); an embedding model trains."""

import lightning as L
import pytest
import torch
from conftest import compose_train
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from {{ cookiecutter.package }}.core import task
from {{ cookiecutter.package }}.engines.lightning import Classifier
from {{ cookiecutter.package }}.engines.raw import autocast, batch_to_device, parse_precision

VOCABULARY, LENGTH, CLASSES = 50, 6, 10


class BagOfTokens(nn.Module):
    """An embedding of int64 token ids, averaged over the sequence, and a linear head; records its inputs' dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 8)
        self.head = nn.Linear(8, CLASSES)
        self.input_dtypes: list[torch.dtype] = []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.input_dtypes.append(tokens.dtype)
        return self.head(self.embedding(tokens).mean(dim=1))


def token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(VOCABULARY, (8, LENGTH), generator=generator)
    return tokens, torch.randint(CLASSES, (8,), generator=generator)


def raw_step(model: nn.Module, precision_name: str) -> float:
    """One optimizer step of engines/raw.py's step: batch_to_device, autocast, task.training_step."""
    device = torch.device("cpu")
    precision = parse_precision(precision_name, device)
    model.to(device, precision.param_dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, targets = batch_to_device(token_batch(), device, precision)
    with autocast(device, precision):
        loss = task.training_step(model, (inputs, targets))
    loss.backward()
    optimizer.step()
    return loss.item()


def lightning_step(model: nn.Module, precision_name: str) -> float:
    """One optimizer step of engines/lightning.py's Classifier under Trainer(precision=...)."""
    cfg = compose_train(["data=digits", "optimizer=sgd", "optimizer.lr=0.1", "scheduler=none"])
    module = Classifier(model, cfg)
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision_name,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, DataLoader(TensorDataset(*token_batch()), batch_size=8))
    return trainer.callback_metrics["train/loss"].item()


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed"])
def test_an_embedding_model_trains_on_int64_token_ids_in_both_engines(precision):
    losses = {}
    for engine, step in (("raw", raw_step), ("lightning", lightning_step)):
        torch.manual_seed(0)
        model = BagOfTokens()
        before = model.embedding.weight.detach().clone()
        losses[engine] = step(model, precision)
        assert model.input_dtypes == [torch.int64], engine
        assert not torch.equal(model.embedding.weight.detach().to(before.dtype), before), engine
    assert losses["raw"] == pytest.approx(losses["lightning"], rel=1e-6)
