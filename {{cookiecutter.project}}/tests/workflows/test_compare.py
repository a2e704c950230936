"""compare.py trains any set of engines with one config and writes a filled-in comparison; it refuses bad engine
names and what would make the engines differ, and stops with one line naming the engine when a run fails."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, PROJECT_ROOT
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

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


def read_table(markdown: str, engines: tuple[str, ...] = comparison.ENGINES) -> dict[str, list[str]]:
    """The table of comparison.md as {first cell: [one cell per engine]}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert lines[0] == "| | " + " | ".join(engines) + " |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(row) == 1 + len(engines) for row in rows), rows
    return {row[0]: row[1:] for row in rows}


def cell_value(cell: str) -> float:
    """The one number of a cell such as '1.00e-01 (at step 1, of 3 steps)' or '0.130 (x1.08)'."""
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


# One epoch of the default run (20 steps on digits), logged every 4th step: steps 3, 7, 11, 15, 19. No limit_*_batches:
# engine=minimal and engine=fabric refuse them.
ONE_EPOCH = ["trainer.max_epochs=1", "trainer.log_every_n_steps=4", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_compare_trains_the_whole_ladder_into_one_table_and_one_figure(log_dir):
    result = run_compare(log_dir, *ONE_EPOCH)
    assert result.returncode == 0, result.stdout + result.stderr
    for position, engine in enumerate(comparison.ENGINES, start=1):
        assert f"[{position}/4] {engine} ... done in" in result.stdout
    [out_dir] = (log_dir / "compare").iterdir()
    for engine in comparison.ENGINES:  # each engine's run is a normal train.py run folder inside the comparison's
        assert (out_dir / engine / "metrics.json").is_file() and (out_dir / engine / ".hydra").is_dir()
        assert (out_dir / f"{engine}.log").is_file()

    report = (out_dir / "comparison.md").read_text()
    assert report.startswith("# engine=minimal vs fabric vs raw vs lightning\n")
    table = read_table(report)
    assert set(table) == ROWS
    for label, cells in table.items():
        if label == comparison.LOSS_DIFFERENCE:  # the reference's cell names it; the others hold one value each
            assert cells[0] == comparison.REFERENCE
            for cell in cells[1:]:  # the same numbers on every rung, at every step all of them logged
                assert cell_value(cell) < 1e-6 and cell.endswith(" 5 steps)"), cell
            continue
        for cell in cells:
            cell_value(cell)  # every engine cell is a number: raises ValueError for "n/a" or an empty cell
        assert all("(" in cell for cell in cells[1:]) and "(" not in cells[0], (label, cells)  # against the first
    assert len(set(table["test/acc (best checkpoint)"][i].split()[0] for i in range(4))) == 1
    lines = [int(cell_value(cell)) for cell in table[comparison.LINES_OF_CODE]]
    assert 20 < lines[0] < lines[1] and lines[0] < lines[2], lines  # minimal is the shortest rung
    assert "one run of each engine" in report
    # bake: if cookiecutter.include_benchmarks
    assert "`python benchmarks/engine_overhead.py`" in report
    link = report.split("[benchmarks/README.md](", 1)[1].split(")", 1)[0]
    assert (out_dir / link).resolve() == (PROJECT_ROOT / "benchmarks" / "README.md").resolve()

    # bake: endif
    from matplotlib.image import imread  # the PNG decodes and is a real picture, not an empty canvas

    image = imread(out_dir / "comparison.png")
    assert image.shape[0] > 300 and image.shape[1] > 900
    assert image[..., :3].std() > 0.05


@pytest.mark.slow
def test_compare_trains_the_engines_it_is_given_in_their_order(log_dir):
    result = run_compare(log_dir, "engines=[lightning,minimal]", *ONE_EPOCH)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/2] lightning ... done in" in result.stdout and "[2/2] minimal ... done in" in result.stdout
    [out_dir] = (log_dir / "compare").iterdir()
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == [".hydra", "lightning", "minimal"]
    report = (out_dir / "comparison.md").read_text()
    assert " engines=[lightning,minimal] trainer.max_epochs=1 " in report  # the command as typed
    table = read_table(report, ("lightning", "minimal"))
    assert cell_value(table[comparison.LOSS_DIFFERENCE][1]) < 1e-6
    # train.py got every override but engines= (it has no such key: it would have refused it)
    hydra_overrides = (out_dir / "minimal" / ".hydra" / "overrides.yaml").read_text()
    assert "engines" not in hydra_overrides and "engine=minimal" in hydra_overrides


@pytest.mark.parametrize("override", ["engine=raw", "engine.name=lightning", "ckpt_path=last"])
def test_compare_refuses_what_would_make_the_engines_differ(log_dir, override):
    result = run_compare(log_dir, override)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: {override}: compare.py"), result.stderr
    assert not (log_dir / "compare").exists()  # refused before any folder is made


ACCEPTED = "(accepted: one or more of minimal, fabric, raw, lightning, each once, e.g. engines=[raw,lightning])"


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("engines=[raw,torch]", "'torch' is not an engine"),
        ("engines=keras", "'keras' is not an engine"),
        ("engines=[raw,raw]", "raw is named twice"),
        ("engines=[]", "no engine"),
        ("engines=[raw", "no viable alternative"),  # Hydra's own parse error, on the same one line
    ],
)
def test_compare_refuses_a_bad_engine_list_in_one_line(log_dir, override, problem):
    result = run_compare(log_dir, override)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {override} is not valid: ") and problem in line, line
    if problem != "no viable alternative":
        assert line.endswith(ACCEPTED), line
    assert not (log_dir / "compare").exists()  # refused before any folder is made


@pytest.mark.slow
def test_a_failed_engine_run_stops_the_comparison_with_one_line(log_dir):
    result = run_compare(log_dir, "trainer.accelerator=tpu", timeout=120)
    first = comparison.ENGINES[0]
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: engine={first} failed with exit code 1"), result.stderr
    assert "trainer.accelerator='tpu' is not known" in result.stderr  # the engine's own last lines, shown above
    [out_dir] = (log_dir / "compare").iterdir()
    assert "is not known" in (out_dir / f"{first}.log").read_text()  # what it wrote is kept
    assert not any((out_dir / engine).exists() for engine in comparison.ENGINES[1:])  # the others never started
    assert not (out_dir / "comparison.md").exists()


def test_compare_config_composes_into_its_own_folder(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="compare", overrides=[f"paths.log_dir={tmp_path}", "seed=3"], return_hydra_config=True
        )
    assert cfg.task == "compare" and cfg.seed == 3
    assert list(cfg.engines) == list(comparison.ENGINES)  # the whole ladder by default, bottom first
    assert Path(cfg.hydra.run.dir).parent == tmp_path / "compare"


def test_check_overrides_passes_everything_else():
    comparison.check_overrides(["trainer.max_epochs=2", "optimizer=sgd", "+trainer.foo=1", "seed=1"])
    comparison.check_overrides(["engines=[fabric,minimal]", "engines=raw", "engines=[raw],[minimal,lightning]"])
    with pytest.raises(UserError, match="trains every engine of engines="):
        comparison.check_overrides(["seed=1", "+engine=raw"])
    with pytest.raises(UserError, match=r"^engines=\[raw\],\[jax\] is not valid: 'jax' is not an engine"):
        comparison.check_overrides(["engines=[raw],[jax]"])  # each choice of a -m sweep


def test_check_engines_keeps_the_order_given():
    assert comparison.check_engines(["lightning", "minimal"]) == ("lightning", "minimal")
    assert comparison.check_engines("fabric") == ("fabric",)
    assert comparison.check_engines(list(comparison.ENGINES)) == comparison.ENGINES
    with pytest.raises(UserError, match=r"^engines=\[raw,5\] is not valid: '5' is not an engine"):
        comparison.check_engines(["raw", 5])
    with pytest.raises(UserError, match=r"^engines=None is not valid: no engine"):
        comparison.check_engines(None)  # ~engines


def test_each_engine_gets_every_override_but_engines():
    overrides = ["engines=[raw,fabric]", "seed=1", "+engines=[raw]", "optimizer=sgd"]
    assert comparison.train_overrides(overrides) == ["seed=1", "optimizer=sgd"]


def test_every_engine_has_its_files_and_a_style():
    assert set(comparison.ENGINE_FILES) == set(comparison.STYLES) == set(comparison.ENGINES)
    for files in comparison.ENGINE_FILES.values():
        assert all((comparison.ENGINES_DIR / name).is_file() for name in files), files


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
def test_the_per_step_row_shows_one_value_per_engine_against_the_first(raw, lightning, cell):
    runs = [fake_run("raw", raw), fake_run("lightning", lightning), fake_run("minimal", raw)]
    rows = {label: cells for label, *cells in comparison.table_rows(runs)}
    assert rows[comparison.LOSS_DIFFERENCE] == [
        comparison.REFERENCE,
        cell,
        f"0.00e+00 (identical at all {len(raw)} steps)",
    ]


def test_each_cell_compares_its_engine_with_the_first():
    runs = [
        fake_run("minimal", [(0, 1.0)]),
        fake_run("fabric", [(0, 1.0)], epoch_times=[1.0, 0.5, 1.5], **{"test/acc": 0.75}),
        fake_run("raw", [(0, 1.0)], startup_s=2.0),
    ]
    rows = {label: cells for label, *cells in comparison.table_rows(runs)}
    assert rows["time per epoch, median, training + validation (s)"] == ["0.500", "1.000 (x2.00)", "0.500 (x1.00)"]
    assert rows["test/acc (best checkpoint)"] == ["0.8750", "0.7500 (-1.25e-01)", "0.8750 (identical)"]
    assert rows["start-up, process start to first training step (s)"] == ["4.00", "4.00 (x1.00)", "2.00 (x0.50)"]
    loc = rows[comparison.LINES_OF_CODE]
    assert int(loc[0]) == comparison.code_lines(comparison.ENGINES_DIR / "minimal.py")
    assert loc[2].startswith(f"{comparison.code_lines(comparison.ENGINES_DIR / 'raw.py')} (x")


def test_the_report_says_its_timings_are_one_run_and_links_the_benchmark(tmp_path):
    out_dir = tmp_path / "logs" / "compare" / "2026-01-01_00-00-00_000000"
    out_dir.mkdir(parents=True)
    runs = [
        fake_run(engine, [(0, 1.0), (5, 0.5)], epoch_times=[1.0, 0.5, 1.5] if engine == "lightning" else None)
        for engine in comparison.ENGINES
    ]
    table = comparison.write_report(runs, ["seed=1"], out_dir, project_root=tmp_path)
    report = (out_dir / "comparison.md").read_text()
    assert table in report and "`python compare.py seed=1`" in report
    assert (
        read_table(report)[comparison.LOSS_DIFFERENCE]
        == [comparison.REFERENCE] + ["0.00e+00 (identical at all 2 steps)"] * 3
    )
    assert "[minimal/](minimal/), [fabric/](fabric/), [raw/](raw/), [lightning/](lightning/)" in report
    assert "The timings are from one run of each engine" in report
    # bake: if cookiecutter.include_benchmarks
    assert "`python benchmarks/engine_overhead.py`" in report
    assert "[benchmarks/README.md](../../../benchmarks/README.md)" in report
    # bake: endif
    assert (out_dir / "comparison.png").stat().st_size > 0


def test_code_lines_skip_blanks_comments_and_docstrings(tmp_path):
    source = tmp_path / "engine.py"
    source.write_text(
        '"""Module\n\ndocstring."""\n\n# a comment\nimport os  # counted\n\n\n'
        'def f(x):\n    """One line."""\n    text = """not a\n    docstring"""\n    return (x,\n'
        "            text)\n"
    )
    assert comparison.code_lines(source) == 6  # import, def, text = (2 lines), return (2 lines)


def markdown_table(text: str, header: str) -> str:
    """The table of a Markdown text that starts with the line `header`, up to its last row."""
    lines = text.splitlines()
    assert header in lines, f"no table starts with: {header}"
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


@pytest.mark.parametrize(("document", "grouped"), [("COMPARISON.md", False), ("README.md", True)])
def test_the_tables_of_what_each_rung_implements_are_the_engines_own_lists(document, grouped):
    expected = comparison.settings_table(grouped=grouped)
    written = markdown_table((PROJECT_ROOT / document).read_text(), expected.splitlines()[0])
    assert written == expected, f"{document}'s table is not the engines' lists; it should read:\n{expected}"


def test_the_settings_table_has_every_trainer_key_and_the_rungs_in_order():
    table = comparison.implemented_settings()
    trainer_keys = set(OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml"))
    assert {setting.removeprefix("trainer.") for setting in table if setting.startswith("trainer.")} == trainer_keys
    assert all(list(cells) == list(comparison.ENGINES) for cells in table.values())
    assert all(cells["lightning"] == comparison.ALL for cells in table.values())  # the Trainer takes every key
    # Up the ladder a rung implements at least what the one below does (fabric hands data.loader=tensor back).
    for setting, cells in table.items():
        if setting != "data.loader":
            rank = [cells[engine] == comparison.ALL for engine in comparison.ENGINES]
            assert rank == sorted(rank), (setting, cells)
    assert table["trainer.precision"]["minimal"] == "`32-true` only" and table["trainer.precision"]["fabric"] == "yes"
