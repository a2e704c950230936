"""Both engines write the same TensorBoard artefacts beyond the scalars (summaries.py), with the same tags."""

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SHORT_RUN, compose_train, run_dirs
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter

from {{ cookiecutter.package }}.core.data import DataPipeline
from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.engines.raw import fit as raw_fit
from {{ cookiecutter.package }}.watching import summaries
from {{ cookiecutter.package }}.workflows.launch import seed_everything

ENGINES = ("raw", "lightning")
EVERY_EPOCH = "logger.tensorboard.histogram_every_n_epochs=1"
STEPS_PER_EPOCH = 3  # SHORT_RUN: limit_train_batches=3, two epochs


def read_events(tensorboard_dir: Path) -> EventAccumulator:
    events = EventAccumulator(
        str(tensorboard_dir),
        size_guidance={
            kind: 0 for kind in ("compressedHistograms", "images", "audio", "scalars", "histograms", "tensors")
        },
    )  # 0: keep every event
    events.Reload()
    return events


@pytest.fixture(scope="module")
def events(short_runs) -> dict[str, EventAccumulator]:
    """One short run of each engine, histograms every epoch (conftest.short_runs)."""
    log_dir, results = short_runs
    runs = {}
    for engine in ENGINES:
        assert results[engine].returncode == 0, results[engine].stdout + results[engine].stderr
        [run_dir] = run_dirs(log_dir, engine)
        runs[engine] = read_events(run_dir / "tensorboard")
    return runs


def parameter_names() -> list[str]:
    return [name for name, _ in build_model(compose_train().model).named_parameters()]


def decoded(image_event) -> Image.Image:
    return Image.open(io.BytesIO(image_event.encoded_image_string))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_writes_every_artefact(events, engine):
    run = events[engine]
    final_step = 2 * STEPS_PER_EPOCH
    tags = run.Tags()

    assert set(tags["images"]) == {summaries.INPUTS_TAG, summaries.MISCLASSIFIED_TAG, summaries.CONFUSION_MATRIX_TAG}
    [inputs] = run.Images(summaries.INPUTS_TAG)
    assert inputs.step == 0
    for tag in (summaries.MISCLASSIFIED_TAG, summaries.CONFUSION_MATRIX_TAG):
        [figure] = run.Images(tag)
        assert figure.step == final_step
        assert decoded(figure).size == (figure.width, figure.height) and figure.width > 200  # a drawn figure

    names = parameter_names()
    assert set(tags["histograms"]) == {f"{kind}/{name}" for kind in ("weights", "gradients") for name in names}
    for tag in tags["histograms"]:  # the first step of each epoch (histogram_every_n_epochs=1)
        assert [event.step for event in run.Histograms(tag)] == [0, STEPS_PER_EPOCH], tag
    # Real gradients of a training step: spread out, not zeroed.
    gradient = run.Histograms(f"gradients/{names[0]}")[0].histogram_value
    assert gradient.max > gradient.min and gradient.sum_squares > 0

    assert tags["graph"]
    graph_ops = {node.op for node in run.Graph().node}
    assert {"aten::_convolution", "aten::linear"} <= graph_ops, graph_ops

    hparams = run.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert [metric.name.tag for metric in experiment.metric_infos] == list(summaries.HPARAM_METRICS)
    session = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["engine"].string_value == engine
    assert session.hparams["optimizer.lr"].number_value == pytest.approx(compose_train().optimizer.lr)
    assert {h.name for h in experiment.hparam_infos} == set(session.hparams)
    # TensorBoard shows each metric's value from the run's scalar of that tag: they must be there.
    assert set(summaries.HPARAM_METRICS) <= set(tags["scalars"])


@pytest.mark.slow
def test_both_engines_write_the_same_tags_and_the_same_histograms(events):
    raw, lightning = events["raw"], events["lightning"]
    for kind in ("images", "histograms", "graph"):
        assert raw.Tags()[kind] == lightning.Tags()[kind], kind
    assert set(raw.PluginTagToContent("hparams")) == set(lightning.PluginTagToContent("hparams"))
    assert [n.op for n in raw.Graph().node] == [n.op for n in lightning.Graph().node]
    # The same weights and gradients at the same steps: both engines record the same moment of a step.
    for tag in raw.Tags()["histograms"]:
        for a, b in zip(raw.Histograms(tag), lightning.Histograms(tag), strict=True):
            a, b = a.histogram_value, b.histogram_value
            assert (a.num, a.min, a.max) == pytest.approx((b.num, b.min, b.max), rel=1e-4, abs=1e-7), tag
            assert a.sum_squares == pytest.approx(b.sum_squares, rel=1e-4, abs=1e-10), tag


def test_switched_off_artefacts_are_not_written(tmp_path):
    cfg = compose_train(
        [
            "engine=raw",
            *SHORT_RUN,
            "logger.tensorboard.images=false",
            "logger.tensorboard.graph=false",
            "logger.tensorboard.histogram_every_n_epochs=0",
            "logger.tensorboard.confusion_matrix=false",
            "logger.tensorboard.hparams=false",
        ]
    )
    seed_everything(cfg.seed)
    raw_fit(cfg, tmp_path)
    run = read_events(tmp_path / "tensorboard")
    tags = run.Tags()
    assert (tags["images"], tags["histograms"], tags["graph"]) == ([], [], False)
    with pytest.raises(KeyError, match="hparams"):  # no data of that plugin at all
        run.PluginTagToContent("hparams")
    assert "test/acc" in tags["scalars"]


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("num_samples", 0, "a whole number of at least 1"),
        ("histogram_every_n_epochs", -1, "a whole number of at least 0"),
        ("histogram_every_n_epochs", "often", "a whole number of at least 0"),
        ("images", "yes", "true, false or null"),
    ],
)
def test_bad_switch_is_named_with_what_is_accepted(key, value, accepted):
    settings = OmegaConf.create({"subdir": "tensorboard", key: value})
    with pytest.raises(UserError, match=rf"logger\.tensorboard\.{key}={value!r} is not valid: use {accepted}"):
        summaries.Settings.from_config(settings)


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_switch_stops_either_engine_before_any_work(tmp_path, engine):
    if engine == "lightning":
        from {{ cookiecutter.package }}.engines.lightning import fit
    else:
        fit = raw_fit
    with pytest.raises(UserError, match=r"logger\.tensorboard\.num_samples=0 is not valid"):
        fit(compose_train([f"engine={engine}", "logger.tensorboard.num_samples=0"]), tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_artefacts_leave_training_untouched(tmp_path):
    """No draw from the global random generator, no change to the model (batch-norm statistics, mode)."""
    cfg = compose_train()
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.setup()
    model = build_model(cfg.model).train()
    images, labels = summaries.first_examples(data.train_set, 16)
    F.cross_entropy(model(images), labels).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    settings = summaries.Settings()
    mistakes = summaries.Mistakes(settings, cfg.data.num_classes, torch.device("cpu"))
    with SummaryWriter(tmp_path) as writer:
        summaries.add_input_images(writer, settings, data.train_set)
        summaries.add_graph(writer, settings, model, data.train_set)
        assert model.training  # traced in eval mode, then put back
        summaries.add_histograms(writer, model, 0)
        with torch.no_grad():
            mistakes.update(images, model.eval()(images), labels)
        mistakes.write(writer, 0)
        summaries.add_hparams(writer, settings, cfg)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    expected = torch.zeros(cfg.data.num_classes, cfg.data.num_classes, dtype=torch.int64)  # true x predicted
    for true, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        expected[true, guess] += 1
    assert torch.equal(mistakes.confusion, expected) and int(expected.sum()) == 16
    assert len(read_events(tmp_path).Tags()["images"]) == 3
