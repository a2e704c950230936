"""compare.py trains both engines with one config and writes a filled-in comparison; it refuses what would make
the engines differ, and stops with one line naming the engine when a run fails."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, PROJECT_ROOT, SHORT_RUN
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.workflows import comparison

# The rows of comparison.md for runs on the CPU (a run on a GPU adds its peak CUDA memory).
ROWS = {
    "final train/loss (last step)",
    "val/acc (last epoch)",
    "test/acc (best checkpoint)",
    comparison.LOSS_DIFFERENCE,
    "time per epoch, median, training + validation (s)",
    "optimizer steps per second (steps / time in epochs)",
    "start-up, process start to first training step (s)",
    "whole `python train.py` process (s)",
    "peak memory of the process, RSS (MB)",
    comparison.LINES_OF_CODE,
}


def run_compare(log_dir: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "compare.py", f"paths.log_dir={log_dir}", *overrides],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_table(markdown: str) -> dict[str, list[str]]:
    """The table of comparison.md as {first cell: [raw, lightning, lightning vs raw]}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert lines[0] == "| | raw | lightning | lightning vs raw |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(row) == 4 for row in rows), rows
    return {row[0]: row[1:] for row in rows}


def pair_value(cell: str) -> float:
    """The one number of a cell such as '1.00e-01 (at step 1, of 3 steps)'."""
    return float(cell.split(" ", 1)[0])


def fake_run(
    engine: str, losses: list[tuple[int, float]], epoch_times: list[float] | None = None, **metrics
) -> comparison.EngineRun:
    """An EngineRun as read_run returns it, without training."""
    epoch_times = [0.5, 0.25, 0.75] if epoch_times is None else epoch_times
    values = {
        "device": "cpu",
        "seed": 42,
        "global_step": 30,
        "epoch_times_s": epoch_times,
        "train/loss": 0.125,
        "val/acc": 0.9,
        "test/acc": 0.875,
        "startup_s": 4.0,
        "peak_rss_mb": 800.0,
        "peak_cuda_mb": None,
        **metrics,
    }
    return comparison.EngineRun(engine, Path(engine), 10.0, values, {"train/loss": losses})


@pytest.mark.slow
def test_compare_writes_a_filled_table_and_the_curves(log_dir):
    result = run_compare(log_dir, *SHORT_RUN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/2] raw ... done in" in result.stdout and "[2/2] lightning ... done in" in result.stdout
    [out_dir] = (log_dir / "compare").iterdir()
    for engine in comparison.ENGINES:  # each engine's run is a normal train.py run folder inside the comparison's
        assert (out_dir / engine / "metrics.json").is_file() and (out_dir / engine / ".hydra").is_dir()
        assert (out_dir / f"{engine}.log").is_file()

    report = (out_dir / "comparison.md").read_text()
    table = read_table(report)
    assert set(table) == ROWS
    for label, (raw, lightning, versus) in table.items():
        assert versus, label
        if label == comparison.LOSS_DIFFERENCE:  # one value for the pair, in the last column
            assert raw == lightning == "", (raw, lightning)
            continue
        for cell in (raw, lightning):
            float(cell)  # every engine cell is a number: raises ValueError for "n/a" or an empty cell
    assert pair_value(table[comparison.LOSS_DIFFERENCE][2]) < 1e-4
    assert table[comparison.LOSS_DIFFERENCE][2].endswith("6 steps)")  # every step both engines logged
    assert "one run of each engine" in report and "`python benchmarks/engine_overhead.py`" in report
    [link] = re.findall(r"\[benchmarks/README\.md\]\(([^)]+)\)", report)
    assert (out_dir / link).resolve() == (PROJECT_ROOT / "benchmarks" / "README.md").resolve()
    assert table["test/acc (best checkpoint)"][0] == table["test/acc (best checkpoint)"][1]
    assert int(table[comparison.LINES_OF_CODE][0]) > 20 and int(table[comparison.LINES_OF_CODE][1]) > 20

    from matplotlib.image import imread  # the PNG decodes and is a real picture, not an empty canvas

    image = imread(out_dir / "comparison.png")
    assert image.shape[0] > 300 and image.shape[1] > 900
    assert image[..., :3].std() > 0.05


@pytest.mark.parametrize("override", ["engine=raw", "engine.name=lightning", "ckpt_path=last"])
def test_compare_refuses_what_would_make_the_engines_differ(log_dir, override):
    result = run_compare(log_dir, override)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: {override}: compare.py"), result.stderr
    assert not (log_dir / "compare").exists()  # refused before any folder is made


def test_a_failed_engine_run_stops_the_comparison_with_one_line(log_dir):
    result = run_compare(log_dir, "trainer.accelerator=tpu", timeout=120)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: engine=raw failed with exit code 1"), result.stderr
    assert "trainer.accelerator='tpu' is not known" in result.stderr  # the engine's own last lines, shown above
    [out_dir] = (log_dir / "compare").iterdir()
    assert "is not known" in (out_dir / "raw.log").read_text()  # what it wrote is kept
    assert not (out_dir / "lightning").exists() and not (out_dir / "comparison.md").exists()


def test_compare_config_composes_into_its_own_folder(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="compare", overrides=[f"paths.log_dir={tmp_path}", "seed=3"], return_hydra_config=True
        )
    assert cfg.task == "compare" and cfg.seed == 3
    assert Path(cfg.hydra.run.dir).parent == tmp_path / "compare"


def test_check_overrides_passes_everything_else():
    comparison.check_overrides(["trainer.max_epochs=2", "optimizer=sgd", "+trainer.foo=1", "seed=1"])
    with pytest.raises(UserError, match="always trains both engines"):
        comparison.check_overrides(["seed=1", "+engine=raw"])


def test_hydra_quoted_paths_survive_the_override_parser():
    path = "/tmp/my runs/it's=here/raw"
    override = OverridesParser.create().parse_override(f"hydra.run.dir={comparison.hydra_quoted(path)}")
    assert override.value() == path


def test_largest_difference_compares_only_the_steps_both_logged():
    raw = [(0, 1.0), (1, 0.5), (2, 0.25)]
    lightning = [(1, 0.5), (2, 0.2), (3, 9.0)]
    difference, step, compared = comparison.largest_difference(raw, lightning)
    assert (step, compared) == (2, 2) and difference == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("raw", "lightning", "cell"),
    [
        ([(0, 1.0), (1, 0.5)], [(0, 1.0), (1, 0.5)], "0.00e+00 (identical at all 2 steps)"),
        ([(0, 1.0), (1, 0.5), (2, 0.25)], [(0, 1.0), (1, 0.75), (2, 0.125)], "2.50e-01 (at step 1, of 3 steps)"),
        ([(0, 1.0)], [(1, 1.0)], "n/a (no step logged by both engines)"),
    ],
)
def test_the_per_step_row_shows_one_value_for_the_pair(raw, lightning, cell):
    rows = {
        label: cells for label, *cells in comparison.table_rows(fake_run("raw", raw), fake_run("lightning", lightning))
    }
    assert rows[comparison.LOSS_DIFFERENCE] == ["", "", cell]
    assert rows["time per epoch, median, training + validation (s)"] == ["0.500", "0.500", "ratio 1.00"]


def test_the_report_says_its_timings_are_one_run_and_links_the_benchmark(tmp_path):
    out_dir = tmp_path / "logs" / "compare" / "2026-01-01_00-00-00_000000"
    out_dir.mkdir(parents=True)
    raw = fake_run("raw", [(0, 1.0), (5, 0.5)])
    lightning = fake_run("lightning", [(0, 1.0), (5, 0.5)], epoch_times=[1.0, 0.5, 1.5])
    table = comparison.write_report(raw, lightning, ["seed=1"], out_dir, project_root=tmp_path)
    report = (out_dir / "comparison.md").read_text()
    assert table in report and "`python compare.py seed=1`" in report
    assert read_table(report)[comparison.LOSS_DIFFERENCE] == ["", "", "0.00e+00 (identical at all 2 steps)"]
    assert "The timings are from one run of each engine" in report
    assert "`python benchmarks/engine_overhead.py`" in report
    assert "[benchmarks/README.md](../../../benchmarks/README.md)" in report
    assert (out_dir / "comparison.png").stat().st_size > 0


def test_code_lines_skip_blanks_comments_and_docstrings(tmp_path):
    source = tmp_path / "engine.py"
    source.write_text(
        '"""Module\n\ndocstring."""\n\n# a comment\nimport os  # counted\n\n\n'
        'def f(x):\n    """One line."""\n    text = """not a\n    docstring"""\n    return (x,\n'
        "            text)\n"
    )
    assert comparison.code_lines(source) == 6  # import, def, text = (2 lines), return (2 lines)
