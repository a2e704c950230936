"""data.loader=tensor (tensor_loader.py): the DataLoader path's batches, bit for bit, in its order (seeded, resumable,
DDP shares), with the augmentation drawn per batch from (seed, epoch, rank, batch); both engines agree on it."""

import signal

import pytest
import torch
from conftest import assert_same_curves, compose_train, scalars
from datasets_on_disk import make_files, make_mnist
from in_process import train, weights
from torch.optim.optimizer import register_optimizer_step_pre_hook

from {{ cookiecutter.package }}.core import data as data_module
from {{ cookiecutter.package }}.core.data import DataPipeline
from {{ cookiecutter.package }}.core.errors import TrainingStopped, UserError
from {{ cookiecutter.package }}.core.tensor_loader import TensorLoader, TensorSplit, augment, augment_generator
from {{ cookiecutter.package }}.run.config_rules import validate
from {{ cookiecutter.package }}.watching.summaries import first_examples

AUGMENT = ("data.augment.crop_padding=2", "data.augment.horizontal_flip=true")


@pytest.fixture(params=["mnist", "cifar10"])
def dataset(request, tmp_path, monkeypatch):
    """(name, root) of a tiny dataset in its real file format: 40 MNIST / 50 CIFAR-10 training images."""
    make_files(request.param, tmp_path, monkeypatch)
    return request.param, tmp_path


def pipeline(name: str, root, loader: str, *overrides: str, seed: int = 0) -> DataPipeline:
    cfg = compose_train(
        [
            f"data={name}",
            f"data.root={root}",
            "data.download=false",
            "data.num_workers=0",
            "data.batch_size=8",
            f"data.loader={loader}",
            *overrides,
        ]
    ).data
    data = DataPipeline(cfg, seed=seed)
    data.setup()
    return data


def epoch(loader, number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if loader.sampler is not None:
        loader.sampler.set_epoch(number)
    return list(loader)


def assert_same_batches(left, right) -> None:
    assert len(left) == len(right)
    for (inputs, targets), (other_inputs, other_targets) in zip(left, right, strict=True):
        assert inputs.dtype == other_inputs.dtype == torch.float32 and targets.dtype == other_targets.dtype
        assert torch.equal(inputs, other_inputs) and torch.equal(targets, other_targets)


def test_without_augmentation_the_batches_are_the_dataloaders_bit_for_bit(dataset):
    """The same split, order (epochs 0 and 1 of the seeded shuffle) and conversion (uint8 -> float * (1/255) ->
    Normalize) as the torchvision transform in the DataLoader path: torch.equal, not allclose."""
    tensor, loader = pipeline(*dataset, "tensor"), pipeline(*dataset, "dataloader")
    assert isinstance(tensor.train_set, TensorSplit) and len(tensor.train_set) == len(loader.train_set)
    for number in (0, 1):
        assert_same_batches(epoch(tensor.train_dataloader(), number), epoch(loader.train_dataloader(), number))
    assert_same_batches(list(tensor.val_dataloader()), list(loader.val_dataloader()))
    assert_same_batches(list(tensor.test_dataloader()), list(loader.test_dataloader()))
    assert len(tensor.train_dataloader()) == len(loader.train_dataloader())
    first = epoch(tensor.train_dataloader(), 0)[0][1]
    assert not torch.equal(first, epoch(tensor.train_dataloader(), 1)[0][1])  # the epochs are shuffled apart
    # What summaries.py shows of the training set (TensorBoard images, the graph's input): the same examples.
    for ours, theirs in zip(first_examples(tensor.train_set, 6), first_examples(loader.train_set, 6), strict=True):
        assert torch.equal(ours, theirs)


def test_the_augmentation_is_a_function_of_seed_epoch_and_batch(dataset):
    data = pipeline(*dataset, "tensor", *AUGMENT)
    plain = pipeline(*dataset, "tensor")
    epoch0, again, epoch1 = (epoch(data.train_dataloader(), n) for n in (0, 0, 1))
    assert_same_batches(epoch0, again)
    assert not torch.equal(epoch0[0][0], epoch1[0][0])
    unaugmented = epoch(plain.train_dataloader(), 0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(epoch0, unaugmented, strict=True))  # the same samples
    assert not torch.equal(epoch0[0][0], unaugmented[0][0])
    other_seed = epoch(pipeline(*dataset, "tensor", *AUGMENT, seed=1).train_dataloader(), 0)
    assert not torch.equal(other_seed[0][0], epoch0[0][0])
    assert_same_batches(list(data.val_dataloader()), list(plain.val_dataloader()))  # never augmented
    torch.manual_seed(1)
    state = torch.get_rng_state()
    epoch(data.train_dataloader(), 2)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (dropout's) is not touched


def test_flips_mirror_and_crops_shift_the_images():
    images = torch.randn(64, 3, 6, 5)
    flipped = augment(images, augment_generator(0, 0, 0, 0), 0, True)
    mirrored = torch.rand(64, generator=augment_generator(0, 0, 0, 0)) < 0.5
    assert 10 < mirrored.sum() < 54
    for image, out, mirror in zip(images, flipped, mirrored, strict=True):
        assert torch.equal(out, image.flip(-1) if mirror else image)
    cropped = augment(images, augment_generator(0, 0, 0, 1), 2, False)
    top, left = torch.randint(0, 5, (2, 64, 1), generator=augment_generator(0, 0, 0, 1))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))  # zeros: after normalisation, the mean colour
    for index in range(64):
        t, u = top[index].item(), left[index].item()
        assert torch.equal(cropped[index], padded[index, :, t : t + 6, u : u + 5])
    assert sum(not torch.equal(c, i) for c, i in zip(cropped, images, strict=True)) > 50  # shifted: (2, 2) is none


def test_a_mid_epoch_resume_gives_the_remaining_batches(dataset):
    straight = epoch(pipeline(*dataset, "tensor", *AUGMENT).train_dataloader(), 1)
    resumed = pipeline(*dataset, "tensor", *AUGMENT)
    resumed.resume(2)  # a checkpoint written 2 batches into epoch 1
    loader = resumed.train_dataloader()
    assert len(loader) == len(straight)  # an epoch's length, as the DataLoader's (the engines skip the batches)
    assert_same_batches(epoch(loader, 1), straight[2:])  # the same samples, augmented as in the straight run
    assert_same_batches(epoch(loader, 2), epoch(pipeline(*dataset, "tensor", *AUGMENT).train_dataloader(), 2))


def test_ddp_ranks_get_disjoint_shares_of_the_epoch(dataset, monkeypatch):
    """Two ranks simulated through torch.distributed's answers: each rank's batches are the DataLoader path's
    share, the shares are disjoint (but for the DistributedSampler's padding to equal shares: CIFAR's 45 training
    images give ranks 23 each, one image twice) and together they are the epoch."""
    shares = {}
    for rank in (0, 1):
        with monkeypatch.context() as patched:
            patched.setattr(data_module.dist, "is_initialized", lambda: True)
            patched.setattr(data_module.dist, "get_world_size", lambda: 2)
            patched.setattr(data_module.dist, "get_rank", lambda rank=rank: rank)
            tensor = epoch(pipeline(*dataset, "tensor").train_dataloader(), 1)
            assert_same_batches(tensor, epoch(pipeline(*dataset, "dataloader").train_dataloader(), 1))
        shares[rank] = [tuple(image.flatten().tolist()) for inputs, _ in tensor for image in inputs]
    whole = {
        tuple(image.flatten().tolist())
        for inputs, _ in epoch(pipeline(*dataset, "tensor").train_dataloader(), 1)
        for image in inputs
    }
    padding = len(shares[0]) + len(shares[1]) - len(whole)
    assert len(shares[0]) == len(shares[1]) and padding == len(whole) % 2
    assert len(set(shares[0]) & set(shares[1])) == padding and set(shares[0]) | set(shares[1]) == whole


def test_the_loader_offers_what_the_engines_use_of_a_dataloader(dataset):
    loader = pipeline(*dataset, "tensor").train_dataloader()
    assert isinstance(loader, TensorLoader) and loader.batch_size == 8
    assert len(loader.dataset) == len(loader.sampler) and len(loader) == -(-len(loader.dataset) // 8)
    inputs, targets = next(iter(loader))
    assert inputs.device == loader.dataset.images.device == targets.device  # the pipeline's device (here the CPU)


@pytest.mark.parametrize("augmented", [False, True])
def test_both_engines_train_alike_on_the_tensor_loader(tmp_path, monkeypatch, augmented):
    """As tests/test_parity.py: every logged value, the weights and the accuracies; without augmentation also the
    same run as the DataLoader path's."""
    make_mnist(tmp_path / "data")
    common = [
        "data=mnist",
        f"data.root={tmp_path / 'data'}",
        "data.download=false",
        "data.num_workers=0",
        "data.batch_size=8",
        "optimizer=adam",
        "scheduler=none",
        *(AUGMENT if augmented else ()),
    ]
    runs = {
        engine: train(engine, tmp_path / engine, [*common, "data.loader=tensor"])[1] for engine in ("raw", "lightning")
    }
    tags = ("train/loss", "lr", "train/grad_norm", "val/loss", "val/acc", "test/acc", "epoch")
    assert_same_curves(scalars(tmp_path / "raw"), scalars(tmp_path / "lightning"), tags)
    raw_weights, lit_weights = weights(tmp_path / "raw"), weights(tmp_path / "lightning")
    assert all(torch.allclose(raw_weights[k], lit_weights[k], atol=1e-6) for k in raw_weights)
    for key in ("val/acc", "test/acc", "global_step", "epochs"):
        assert runs["raw"][key] == runs["lightning"][key], key
    assert runs["raw"]["epochs"] == 2 and runs["raw"]["global_step"] == 10  # 36 images in batches of 8, 2 epochs
    if not augmented:
        train("raw", tmp_path / "dataloader", [*common, "data.loader=dataloader"])
        assert scalars(tmp_path / "dataloader")["train/loss"] == scalars(tmp_path / "raw")["train/loss"]
        assert all(torch.equal(raw_weights[k], weights(tmp_path / "dataloader")[k]) for k in raw_weights)


@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_a_run_stopped_mid_epoch_resumes_exactly_on_the_tensor_loader(tmp_path, engine):
    """SIGTERM in step 9 (batch 3 of epoch 1), resume from last.ckpt: the straight run's weights, bitwise (the
    remaining batches, augmented as in the straight run)."""
    common = ["data=digits", "data.loader=tensor", *AUGMENT, "model.dropout=0.3", "trainer.max_epochs=2"]
    train(engine, tmp_path / "straight", common)
    steps = []

    def signal_in_the_step(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == 9:
            signal.raise_signal(signal.SIGTERM)

    hook = register_optimizer_step_pre_hook(signal_in_the_step)
    try:
        with pytest.raises(TrainingStopped, match="stopped by SIGTERM at epoch 1, step 9;"):
            train(engine, tmp_path / "resumed", common)
    finally:
        hook.remove()
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    _, metrics = train(engine, tmp_path / "resumed", common, ckpt_path=last)
    assert (metrics["epochs"], metrics["global_step"]) == (2, 12)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []


def test_bad_loader_values_and_combinations_are_one_line(tmp_path):
    with pytest.raises(UserError) as refused:
        validate(compose_train(["data.loader=gpu"]))
    assert str(refused.value) == "data.loader=gpu is not valid: one of dataloader, tensor"
    cfg = compose_train(["data.loader=tensor", "debug=overfit"])
    with pytest.raises(UserError) as refused:
        DataPipeline(cfg.data, seed=0, batch_limits=cfg.trainer).setup()
    assert str(refused.value).startswith(
        f"trainer.overfit_batches={cfg.trainer.overfit_batches} with data.loader=tensor is not implemented"
    )
    assert "\n" not in str(refused.value)
