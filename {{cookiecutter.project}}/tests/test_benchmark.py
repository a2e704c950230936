"""benchmarks/engine_overhead.py: its Lightning floor is the engines' training, its runs are the documented
commands (engine=minimal, its lowest rung, is `python train.py engine=minimal`: one copy of the loop), the weights it
keeps per epoch are each engine's, and its figures are computed as its docstring says. (The timings themselves are
never tested: they are the benchmark's output.)"""

import contextlib
import importlib.util
import io
import json
import os
import re
import statistics
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT_ROOT, compose_train

from {{ cookiecutter.package }}.engines import minimal
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint
from {{ cookiecutter.package }}.workflows.comparison import hydra_quoted
from {{ cookiecutter.package }}.workflows.launch import seed_everything

SCRIPT = PROJECT_ROOT / "benchmarks" / "engine_overhead.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("engine_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, as the benchmark runs each trainer (on a busy machine, threads that wait for each other
    make epochs many times slower: benchmarks/README.md). The trainers compared below run in this one process, with
    the same threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minimal_run(benchmark, one_thread, tmp_path_factory):
    """Two epochs of engine=minimal on the benchmark's training, and their config."""
    cfg = compose_train([*benchmark.OVERRIDES, "engine=minimal", "trainer.max_epochs=2"])
    seed_everything(cfg.seed)  # what launch.train does before the engine
    with contextlib.redirect_stdout(io.StringIO()):
        return cfg, minimal.fit(cfg, tmp_path_factory.mktemp("minimal"), None)


def test_the_lightning_floor_is_the_same_training_as_the_minimal_engine(benchmark, minimal_run):
    cfg, engine = minimal_run
    floor = benchmark.floor_loop(cfg)
    assert len(floor["epoch_times_s"]) == 2 and floor["startup_s"] > 0
    assert (floor["epochs"], floor["global_step"]) == (2, engine["global_step"])
    # The same steps on the same batches: the same last training loss, to the bit.
    assert floor["train/loss"] == engine["train/loss"]
    # Lightning's val/loss is the batch-size-weighted mean of the batch means (and val/acc of the batch accuracies),
    # the engine's the sum over the samples over their count: the same value up to float rounding.
    assert floor["val/loss"] == pytest.approx(engine["val/loss"], abs=1e-6)
    assert floor["val/acc"] == pytest.approx(engine["val/acc"], abs=1e-6)


@pytest.mark.parametrize("engine", ["minimal", "fabric"])
def test_the_weights_kept_per_epoch_are_the_ones_the_engine_wrote(benchmark, one_thread, engine, tmp_path, monkeypatch):
    """For time to accuracy the benchmark wraps the function each engine writes last.ckpt with; the weights kept
    after the last epoch are those of last.ckpt, and the first epoch's differ from them."""
    from lightning.fabric import Fabric

    monkeypatch.setattr(minimal, "save_checkpoint", minimal.save_checkpoint)  # the wrap is undone after the test
    monkeypatch.setattr(Fabric, "save", Fabric.save)
    cfg = compose_train([*benchmark.OVERRIDES, f"engine={engine}", "trainer.max_epochs=2"])
    seed_everything(cfg.seed)
    with contextlib.redirect_stdout(io.StringIO()):
        weights = benchmark.engine_weights_per_epoch(cfg, engine, tmp_path)
    last = load_checkpoint(tmp_path / engine / "checkpoints" / "last.ckpt")["model"]  # launch.train's run folder
    assert len(weights) == 2 and weights[1].keys() == last.keys()
    assert all(torch.equal(weights[1][key], last[key]) for key in last)
    assert not all(torch.equal(weights[0][key], last[key]) for key in last)
    assert benchmark.test_accuracies(cfg, weights)[1] > 0.5


def synthetic_runs(benchmark) -> dict[str, list[dict]]:
    """Two repeats of every run, the second on a machine twice as slow; the ratios below are chosen per repeat."""

    def trainer(scale: float, factor: float, startup: float) -> dict:  # epochs: fastest 0.9, median 1.0, one slow
        return {
            "epoch_times_s": [scale * factor * t for t in (0.9, 1.0, 3.0)],
            "startup_s": startup,
            "epochs": 3,
            "global_step": 30,
            "wall_s": 10.0 * scale,
            "cpu_s": 9.0 * scale,
        }

    runs = {name: [] for name in benchmark.ORDER}
    for scale, raw_factor, raw_startup, lightning_import_wall in ((1.0, 1.10, 2.4, 5.0), (2.0, 1.20, 3.0, 4.9)):
        runs["minimal"].append(trainer(scale, 1.0, 2.0))
        runs["fabric"].append(trainer(scale, 1.05, 4.5))
        runs["floor"].append(trainer(scale, 1.2, 4.0))
        runs["raw"].append(trainer(scale, raw_factor, raw_startup))
        runs["lightning"].append(trainer(scale, 1.2 * 1.02, 5.0))
        runs["import torch"].append({"wall_s": 2.0, "cpu_s": 1.9, "import_s": 1.5})
        runs["import lightning"].append({"wall_s": lightning_import_wall, "cpu_s": 4.0, "import_s": 4.0})
        runs["import torch + an optimizer"].append({"wall_s": 2.4, "cpu_s": 2.3, "import_s": 2.0})
        runs["train.py engine=raw"].append({"wall_s": {1.0: 3.5, 2.0: 4.5}[scale], "cpu_s": 3.0})
        runs["train.py engine=lightning"].append({"wall_s": 6.0 + scale, "cpu_s": 6.0})
        for engine in benchmark.ENGINES:
            runs[f"importtime {engine}"].append(
                {"wall_s": 7.0, "cpu_s": 7.0, "imports": {"whole import": 4.0 + 2 * scale, "torch": 2.0 * scale}}
            )
    return runs


def test_the_report_takes_ratios_within_each_repeat_and_gives_medians_spreads_and_targets(benchmark):
    summary = benchmark.summarize(
        synthetic_runs(benchmark), {t: [0.5, 0.97, 0.99] for t in benchmark.TRAINERS}, target=0.97
    )
    figures, targets = summary["figures"], summary["targets"]
    assert figures["epoch minimal"] == {"per_repeat": [1.0, 2.0], "median": 1.5, "min": 1.0, "max": 2.0, "unit": "s"}
    assert figures["epoch raw / minimal"]["per_repeat"] == pytest.approx([1.10, 1.20])  # within each repeat
    assert figures["epoch fabric / minimal"]["median"] == pytest.approx(1.05)  # what Fabric costs per step
    assert figures["start-up fabric / import lightning"]["per_repeat"] == pytest.approx([0.9, 4.5 / 4.9])
    assert figures["fastest epoch lightning / floor"]["median"] == pytest.approx(1.02)
    assert figures["start-up raw / import torch"]["per_repeat"] == pytest.approx([1.2, 1.5])  # over the wall
    assert figures["start-up raw / import torch alone"]["per_repeat"] == pytest.approx([1.6, 2.0])  # over import_s
    assert figures["start-up raw / import torch + an optimizer"]["per_repeat"] == pytest.approx([1.0, 1.25])
    assert figures["cpu floor"]["per_repeat"] == [9.0, 18.0]
    expected = {  # target: (median, met)
        "raw start-up <= 1.3 x python -c 'import torch'": (1.35, False),
        "lightning start-up <= 1.05 x python -c 'import lightning'": (statistics.median([1.0, 5.0 / 4.9]), True),
        "raw / minimal per epoch <= 1.03": (1.15, False),
        "lightning / floor per epoch <= 1.03": (1.02, True),
        "python train.py engine=raw <= 4 s": (4.0, True),  # at the limit: met
        "python train.py engine=lightning <= 6 s": (7.5, False),
    }
    assert list(targets) == list(expected)
    for what, (median, met) in expected.items():
        assert (targets[what]["median"], targets[what]["met"]) == (pytest.approx(median), met), what
    # raw - minimal: 0.1 s and 0.4 s per epoch in the two repeats, median 0.25 s, over 10 steps per epoch.
    assert summary["differences"]["raw - minimal"] == pytest.approx(
        {"ms_per_epoch": 250.0, "steps_per_epoch": 10.0, "ms_per_step": 25.0}
    )
    assert summary["imports"]["raw"] == {"whole import": 7.0, "torch": 3.0}
    # Two epochs: 1.9 s and 3.8 s in the two repeats, median 2.85 s; plus the median start-up, 2 s.
    assert summary["time_to_accuracy"]["minimal"] == pytest.approx(
        {"epoch": 2, "best_test_acc": 0.99, "epochs": 3, "test_acc": 0.97, "training_s": 2.85, "with_startup_s": 4.85}
    )
    assert summary["same_training"]

    text = benchmark.report(summary)
    assert "  raw / minimal     1.150 [1.100-1.200]   (per repeat: 1.100, 1.200)" in text
    assert "  minimal           1.5000 s [1.0000-2.0000]   (1.0000, 2.0000)" in text
    assert "raw - minimal: +250.0 ms per epoch, +25.00 ms per optimizer step (10 per epoch" in text
    assert "fabric - minimal: +75.0 ms per epoch, +7.50 ms per optimizer step (10 per epoch" in text
    assert "  floor                     wall 15.00 s [10.00-20.00]   cpu (user+sys) 13.50 s [9.00-18.00]" in text
    assert "raw start-up / that wall 1.350 [1.200-1.500], / the import alone 1.800 [1.600-2.000]" in text
    assert "  minimal   2.85 s  (after epoch 2, test/acc 0.9700; with start-up 4.85 s)" in text
    assert "identical in all 5 trainers" in text
    assert "    fabric start-up / that wall 0.909 [0.900-0.918]" in text  # held against import lightning
    assert re.search(r"\n  raw / minimal per epoch <= 1.03 +1.150 \[1.100-1.200\]   NOT met\n", text)
    assert re.search(r"\n  python train.py engine=raw <= 4 s +4.000 s \[3.500-4.500\]   met\n", text)

    different = benchmark.summarize(
        synthetic_runs(benchmark),
        {**{t: [0.5, 0.97, 0.99] for t in benchmark.TRAINERS}, "floor": [0.5, 0.96, 0.99]},
        target=0.97,
    )
    assert not different["same_training"] and "NOT identical in the 5 trainers" in benchmark.report(different)


# The keys --json writes (the template's own tests hold the module docstring to naming each of them).
JSON_KEYS = {
    "environment",
    "arguments",
    "order",
    "load_average",
    "runs",
    "figures",
    "targets",
    "differences",
    "imports",
    "time_to_accuracy",
    "test_accuracy",
}


def test_the_json_document_has_the_documented_keys(benchmark):
    runs = synthetic_runs(benchmark)
    summary = benchmark.summarize(runs, {t: [0.5, 0.97, 0.99] for t in benchmark.TRAINERS}, target=0.97)
    document = json.loads(
        json.dumps(
            benchmark.json_document(
                summary,
                runs,
                {"torch": "2"},
                {"repeats": 2, "json": SCRIPT, "worker": None},
                (1.0, 2.0, 3.0),
                (4.0, 5.0, 6.0),
            )
        )
    )
    assert set(document) == JSON_KEYS
    assert document["load_average"] == {"before": [1.0, 2.0, 3.0], "after": [4.0, 5.0, 6.0]}
    assert document["arguments"] == {"repeats": 2, "json": str(SCRIPT)}
    assert document["order"] == list(benchmark.ORDER) and document["runs"]["raw"][1]["wall_s"] == 20.0
    assert set(document["figures"]["epoch raw / minimal"]) == {"per_repeat", "median", "min", "max", "unit"}
    assert set(document["targets"]["raw / minimal per epoch <= 1.03"]) == {
        "figure",
        "limit",
        "unit",
        "per_repeat",
        "median",
        "min",
        "max",
        "met",
    }
    assert document["time_to_accuracy"]["target"] == 0.97 and set(document["time_to_accuracy"]["per_trainer"]) == set(
        benchmark.TRAINERS
    )
    assert document["test_accuracy"]["same_training"] is True


def test_main_interleaves_every_run_and_writes_the_json(benchmark, monkeypatch, tmp_path, capsys):
    runs, calls = synthetic_runs(benchmark), []

    def fake_run(name, out, epochs, env):
        calls.append((name, epochs, env.get("OMP_NUM_THREADS")))
        return runs[name][sum(call[0] == name for call in calls) - 1]

    monkeypatch.setattr(benchmark, "run_once", fake_run)
    monkeypatch.setattr(benchmark, "accuracy_run", lambda trainer, out, epochs, env: [0.5, 0.97, 0.99])
    benchmark.main(["--repeats", "2", "--epochs", "3", "--json", str(tmp_path / "figures.json")])
    assert calls == [(name, 3, "1") for name in benchmark.ORDER] * 2  # repeat after repeat, all runs in each
    output = capsys.readouterr().out
    assert "load average before:" in output and ", after:" in output and "targets (median [min-max]" in output
    assert json.loads((tmp_path / "figures.json").read_text())["runs"] == runs


def test_the_runs_are_the_documented_commands(benchmark, monkeypatch, tmp_path):
    commands = {}

    def fake_measured(name, command, log, env):
        commands[name] = command
        log.write_text("import time:       100 |    2000000 | torch\n1.25\n")  # what importtime, then -c prints
        (log.parent / log.name.removesuffix(".log") / "metrics.json").write_text("{}")  # a trainer's
        return {"wall_s": 1.0, "cpu_s": 0.5}

    monkeypatch.setattr(benchmark, "measured", fake_measured)
    results = {name: benchmark.run_once(name, tmp_path / f"run{i}", 3, {}) for i, name in enumerate(benchmark.ORDER)}
    python = sys.executable
    assert commands["floor"] == [
        python,
        str(SCRIPT),
        "--epochs",
        "3",
        "--worker",
        "floor",
        str(tmp_path / f"run{benchmark.ORDER.index('floor')}" / "metrics.json"),
    ]
    for engine in benchmark.ENGINES:  # every rung is the engine train.py runs: the benchmark keeps no loop of its own
        assert commands[engine][:6] == [python, "train.py", f"engine={engine}", *benchmark.OVERRIDES]
        assert commands[f"importtime {engine}"][-1] == "import {{ cookiecutter.package }}.engines." + engine
    assert commands["import torch"][:2] == [python, "-c"] and "; import torch; " in commands["import torch"][2]
    assert "; import torch; torch.optim.SGD(" in commands["import torch + an optimizer"][2]
    assert results["import lightning"] == {"wall_s": 1.0, "cpu_s": 0.5, "import_s": 1.25}
    # The default command, with only the scratch log folder, no progress bar, and the bundled data (the default).
    default_lightning = "train.py engine=lightning"
    assert commands[default_lightning] == [
        python,
        "train.py",
        "engine=lightning",
        "data=digits",
        f"paths.log_dir={hydra_quoted(str(tmp_path / f'run{benchmark.ORDER.index(default_lightning)}'))}",
        "trainer.enable_progress_bar=false",
    ]
    assert results["importtime raw"]["imports"] == {"torch": 2.0}


def test_measured_reports_the_wall_and_cpu_time_of_the_child(benchmark, tmp_path):
    env = dict(os.environ)
    busy = benchmark.measured(
        "busy",
        [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
        tmp_path / "busy.log",
        env,
    )
    idle = benchmark.measured(
        "idle", [sys.executable, "-c", "import time; time.sleep(0.3)"], tmp_path / "idle.log", env
    )
    assert busy["cpu_s"] >= 0.3 and busy["wall_s"] >= busy["cpu_s"] - 0.05
    assert idle["wall_s"] >= 0.3 and idle["cpu_s"] < 0.25
    with pytest.raises(SystemExit, match="the broken run failed with exit code 3"):
        benchmark.measured(
            "broken", [sys.executable, "-c", "print('last words'); raise SystemExit(3)"], tmp_path / "broken.log", env
        )


def test_help_and_bad_arguments():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--repeats" in result.stdout and "--json" in result.stdout
    result = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--repeats and --epochs must be at least 1" in result.stderr
