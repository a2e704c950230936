"""Train several engines with the same config and compare them: the logic behind compare.py.

Each engine runs as its own `python train.py engine=<engine> <overrides>` process, so its start-up time and
memory are its own and Lightning never enters the process of an engine that does not use it. The report is read
back from what the runs wrote: metrics.json and the TensorBoard events. Nothing here imports torch or lightning,
except the table of the settings each rung implements, which reads the engines' own lists.
"""

import ast
import io
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..core.errors import UserError

# The ladder, bottom rung first: the default of compare.py's engines= and the order of its columns.
ENGINES = ("minimal", "fabric", "raw", "lightning")
ENGINES_DIR = Path(__file__).parents[1] / "engines"
# Each engine's own code: for engine=lightning its parity callbacks count too (without them its numbers differ).
ENGINE_FILES = {
    "minimal": ("minimal.py",),
    "fabric": ("fabric.py",),
    "raw": ("raw.py",),
    "lightning": ("lightning.py", "lightning_parity.py"),
}
LINES_OF_CODE = "lines of code (no blank, comment or docstring; lightning: + lightning_parity.py)"
# One value per engine against the reference (the first engine): max |engine - reference| over the common steps.
LOSS_DIFFERENCE = "largest train/loss difference from the first engine, over all steps both logged"
REFERENCE = "(the reference)"  # the first engine's cell of the row above
# bake: if cookiecutter.include_benchmarks
BENCHMARK_SCRIPT = "benchmarks/engine_overhead.py"  # relative to the project root, as train.py is
BENCHMARK_README = "benchmarks/README.md"
# bake: endif
OUTPUT_TAIL_LINES = 15  # of a failed engine run, shown above the error line
# The panels of comparison.png: (TensorBoard tag, y-axis label, log scale).
PANELS = (
    ("train/loss", "training loss (per logged step)", True),
    ("val/loss", "validation loss (per epoch)", True),
    ("val/acc", "validation accuracy (per epoch)", False),
)
# Lines that lie on top of each other when the engines agree: each rung up the ladder narrower than the one below.
STYLES = {
    "minimal": {"color": "tab:green", "linewidth": 11, "alpha": 0.25, "marker": "s", "markersize": 9},
    "fabric": {"color": "tab:purple", "linewidth": 6, "alpha": 0.45, "marker": "D", "markersize": 6},
    "raw": {"color": "tab:blue", "linewidth": 2.5, "alpha": 0.8, "marker": "o", "markersize": 3},
    "lightning": {"color": "tab:red", "linewidth": 1.2, "linestyle": "--", "marker": "x"},
}
MARKERS_UP_TO = 60  # points per line; more would hide the lines


class EngineRunFailed(UserError):
    """An engine's `python train.py` exited with an error; its run folder and output log are kept."""

    def __init__(self, engine: str, exit_code: int, output_tail: list[str], log_path: Path) -> None:
        super().__init__(
            f"engine={engine} failed with exit code {exit_code} (its last lines are above; all of its "
            f"output is in {log_path})"
        )
        self.output_tail = output_tail


@dataclass
class EngineRun:
    engine: str
    run_dir: Path
    seconds: float  # wall time of the whole `python train.py` process, as compare.py measured it
    metrics: dict[str, Any]
    scalars: dict[str, list[tuple[int, float]]]  # TensorBoard tag -> [(step, value)], sorted by step


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def check_overrides(overrides: list[str]) -> None:
    """compare.py passes every override on to each engine, except the ones that would make them differ, and
    engines=, which is its own (checked here too, so that a bad name is refused before Hydra makes a folder)."""
    for override in overrides:
        key = override_key(override)
        if key == "engine" or key.startswith("engine."):
            raise UserError(
                f"{override}: compare.py trains every engine of engines= with the same config; remove it and "
                f"choose the engines with engines=[...] (default: [{','.join(ENGINES)}]), or train one engine "
                f"with: python train.py {override}"
            )
        if key == "ckpt_path":
            raise UserError(
                f"{override}: compare.py trains every engine from scratch, and a checkpoint belongs to one "
                "engine's run; resume it with: python train.py engine=<engine> " + override
            )
        if key == "engines" and "=" in override:
            shown = override.split("=", 1)[1]
            for engines in parsed_values(override):
                check_engines(engines, shown)


def parsed_values(override: str) -> list[Any]:
    """The values of a command-line override as Hydra reads them: one (a list for [a,b], a string for a), or
    each choice of a -m sweep ([a,b],[c])."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override.lstrip("+"))
        return list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
    except Exception as err:  # Hydra's parse error: the same one line as any other bad value
        raise UserError(f"{override} is not valid: {err}") from None


def check_engines(engines: Any, shown: str | None = None) -> tuple[str, ...]:
    """engines= as a tuple of engine names, in the order given: one or more of ENGINES, each once (a single name
    without brackets is one engine)."""
    names = [engines] if isinstance(engines, str) else list(engines) if isinstance(engines, (list, tuple)) else None
    if shown is None:
        shown = "[" + ",".join(map(str, names)) + "]" if names is not None else str(engines)
    accepted = f"accepted: one or more of {', '.join(ENGINES)}, each once, e.g. engines=[{','.join(ENGINES[-2:])}]"
    if not names:
        raise UserError(f"engines={shown} is not valid: no engine ({accepted})")
    unknown = [str(name) for name in names if name not in ENGINES]
    if unknown:
        raise UserError(f"engines={shown} is not valid: {unknown[0]!r} is not an engine ({accepted})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"engines={shown} is not valid: {repeated[0]} is named twice ({accepted})")
    return tuple(names)


def train_overrides(overrides: list[str]) -> list[str]:
    """The overrides each engine's `python train.py` gets: all of compare.py's but its own engines=."""
    return [override for override in overrides if override_key(override) != "engines"]


def hydra_quoted(value: str) -> str:
    """A value for a Hydra command-line override, quoted so that spaces and '=' in paths survive."""
    return "'" + value.replace("'", "\\'") + "'"


def run_engine(engine: str, overrides: list[str], run_dir: Path, train_script: Path) -> float:
    """`python train.py engine=<engine> <overrides>` writing into `run_dir`; its output goes to <run_dir>.log.

    Returns the process's wall time. Ctrl-C reaches the child too (same terminal): wait for it
    to save last.ckpt and stop, then report it like any other failure.
    """
    command = [
        sys.executable,
        str(train_script),
        f"engine={engine}",
        *overrides,
        f"hydra.run.dir={hydra_quoted(str(run_dir))}",
    ]
    log_path = run_dir.with_name(f"{run_dir.name}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            exit_code = process.wait()
        except KeyboardInterrupt:
            exit_code = process.wait()
    seconds = time.perf_counter() - started
    if exit_code != 0:
        lines = log_path.read_text(errors="replace").rstrip().splitlines()
        raise EngineRunFailed(engine, exit_code, lines[-OUTPUT_TAIL_LINES:], log_path)
    return seconds


def read_run(engine: str, run_dir: Path, seconds: float) -> EngineRun:
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"engine={engine} exited without error but wrote no {metrics_path}")
    metrics = json.loads(metrics_path.read_text())
    return EngineRun(engine, run_dir, seconds, metrics, read_scalars(run_dir / "tensorboard"))


def read_scalars(tensorboard_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every events file in the folder (Lightning writes a second file for its test)."""
    # Imported here: tensorboard takes a second to import, and compare.py --help does not need it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its INFO lines about file switching
    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})  # 0: keep all, no sampling
    events.Reload()
    return {tag: sorted((event.step, event.value) for event in events.Scalars(tag)) for tag in events.Tags()["scalars"]}


def largest_difference(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> tuple[float, int | None, int]:
    """(largest |a - b|, the step where it occurs, number of steps compared) over the steps both logged.

    With no step in common: (nan, None, 0). Of several steps with the largest difference, the last one."""
    a_by_step, b_by_step = dict(a), dict(b)
    common = sorted(a_by_step.keys() & b_by_step.keys())
    if not common:
        return math.nan, None, 0
    difference, step = max((abs(a_by_step[s] - b_by_step[s]), s) for s in common)
    return difference, step, len(common)


def code_lines(path: Path) -> int:
    """Lines that hold code: not blank, not only a comment, not part of a docstring."""
    source = path.read_text()
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstring_lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstring_lines)


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def difference(reference: float | None, value: float | None) -> str:
    if reference is None or value is None:
        return ""
    return " (identical)" if value == reference else f" ({value - reference:+.2e})"


def loss_difference(largest: float, step: int | None, compared: int) -> str:
    """A cell of the per-step row: one value, the largest absolute difference from the reference, and where."""
    if not compared:
        return "n/a (no step logged by both engines)"
    if largest == 0:
        return f"{largest:.2e} (identical at all {compared} steps)"
    return f"{largest:.2e} (at step {step}, of {compared} steps)"


def ratio(reference: float | None, value: float | None) -> str:
    if reference is None or value is None or reference == 0:
        return ""
    return f" (x{value / reference:.2f})"


def row(label: str, values: list[float | None], digits: int, versus: Callable) -> tuple[str, ...]:
    """(label, one cell per engine): the first engine's value alone, each other's with `versus` the first's."""
    cells = [number(values[0], digits)]
    cells += [number(value, digits) + versus(values[0], value) for value in values[1:]]
    return (label, *cells)


def table_rows(runs: list[EngineRun]) -> list[tuple[str, ...]]:
    """(what, one cell per engine) for every row of comparison.md; the engines in the order of `runs`, the first
    the reference of the others' differences and ratios."""
    reference = runs[0]
    rows = [
        row(label, [r.metrics.get(key) for r in runs], 4, difference)
        for label, key in (
            ("final train/loss (last step)", "train/loss"),
            ("val/acc (last epoch)", "val/acc"),
            ("test/acc (best checkpoint)", "test/acc"),
        )
    ]
    per_step = [
        loss_difference(*largest_difference(reference.scalars.get("train/loss", []), r.scalars.get("train/loss", [])))
        for r in runs[1:]
    ]
    rows.append((LOSS_DIFFERENCE, REFERENCE, *per_step))
    epoch_s = [statistics.median(r.metrics["epoch_times_s"]) if r.metrics["epoch_times_s"] else None for r in runs]
    steps_per_s = [
        r.metrics["global_step"] / sum(r.metrics["epoch_times_s"]) if r.metrics["epoch_times_s"] else None for r in runs
    ]
    rows += [
        row("time per epoch, median, training + validation (s)", epoch_s, 3, ratio),
        row("optimizer steps per second (steps / time in epochs)", steps_per_s, 1, ratio),
        row("start-up, process start to first training step (s)", [r.metrics.get("startup_s") for r in runs], 2, ratio),
        row("whole `python train.py` process (s)", [r.seconds for r in runs], 2, ratio),
        row("peak memory of the process, RSS (MB)", [r.metrics.get("peak_rss_mb") for r in runs], 1, ratio),
    ]
    cuda = [r.metrics.get("peak_cuda_mb") for r in runs]
    if None not in cuda and any(str(r.metrics.get("device")).startswith("cuda") for r in runs):
        rows.append(row("peak CUDA memory allocated (MB)", cuda, 1, ratio))
    loc = [sum(code_lines(ENGINES_DIR / name) for name in ENGINE_FILES[r.engine]) for r in runs]
    rows.append(row(LINES_OF_CODE, loc, 0, ratio))
    return rows


def markdown_table(engines: list[str], rows: list[tuple[str, ...]]) -> str:
    lines = ["| | " + " | ".join(engines) + " |", "| --- |" + " ---: |" * len(engines)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


# bake: if cookiecutter.include_benchmarks
def link_from(out_dir: Path, target: Path) -> str:
    """`target` as a link from a file in `out_dir`: relative where it can be (another drive: absolute)."""
    try:
        return Path(os.path.relpath(target, out_dir)).as_posix()
    except ValueError:
        return target.as_posix()


def benchmark_readme(out_dir: Path, project_root: Path | None) -> str:
    """The benchmark's README as a link from comparison.md when the project root is known, else its path."""
    if project_root is None:
        return f"`{BENCHMARK_README}`"
    return f"[{BENCHMARK_README}]({link_from(out_dir, project_root / BENCHMARK_README)})"


# bake: endif
def write_report(runs: list[EngineRun], overrides: list[str], out_dir: Path, project_root: Path | None = None) -> str:
    """Write comparison.md and comparison.png into `out_dir`; return the table. The engines in the order of
    `runs`, the first the reference of the others.{% if cookiecutter.include_benchmarks %}

    `project_root` (the folder of train.py) makes the pointer to the benchmark's README a link.{% endif %}"""
    engines = [r.engine for r in runs]
    table = markdown_table(engines, table_rows(runs))
    command = " ".join(["python compare.py", *overrides])
    first = engines[0]
    folders = ", ".join(f"[{engine}/]({engine}/)" for engine in engines)
    logs = ", ".join(f"{engine}.log" for engine in engines)
    device, seed = runs[0].metrics.get("device"), runs[0].metrics.get("seed")
    report = f"""# engine={" vs ".join(engines)}

`{command}` on {datetime.now():%Y-%m-%d %H:%M}, device `{device}`, seed {seed}.
Every engine trained with the same config as a separate `python train.py` process; their run folders are
{folders} (outputs of the processes: {logs}).

{table}

* In parentheses, each engine against the first, {first}: the difference of a metric, the ratio (x) of a time, a
  memory or a length.
* Accuracies and the final loss are metrics.json values. The per-step row is the largest absolute difference
  |engine - {first}| of the `train/loss` TensorBoard scalars over all the steps both engines logged
  (`trainer.log_every_n_steps`), and the step where it occurs.
* Time per epoch is metrics.json `epoch_times_s` (training and the validation pass); start-up is `startup_s`
  (imports, config, data and model, up to the first training step).
# bake: if cookiecutter.include_benchmarks
* To measure the engines' overhead with repeats, interleaved, run `python {BENCHMARK_SCRIPT}`; its method and
  measured figures are in {benchmark_readme(out_dir, project_root)}.
# bake: endif
* The timings are from one run of each engine, so they move with whatever else the machine was doing.

![loss and accuracy curves of every engine](comparison.png)
"""
    (out_dir / "comparison.md").write_text(report)
    plot_curves({r.engine: r.scalars for r in runs}, out_dir / "comparison.png", command)
    return table


def plot_curves(scalars: dict[str, dict[str, list[tuple[int, float]]]], path: Path, command: str) -> None:
    """The engines' curves overlaid, one panel per tag, written as a PNG."""
    # Imported here: only the report needs matplotlib. Figure + the Agg canvas: no GUI backend, no pyplot state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    figure = Figure(figsize=(15, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (tag, label, log_scale) in zip(figure.subplots(1, len(PANELS)), PANELS, strict=True):
        for engine, series in scalars.items():
            if series.get(tag):
                steps, values = zip(*series[tag], strict=True)
                style = {**STYLES[engine], **({"marker": None} if len(steps) > MARKERS_UP_TO else {})}
                axes.plot(steps, values, label=engine, **style)
        if any(series.get(tag) for series in scalars.values()):
            axes.legend()
        else:
            axes.text(0.5, 0.5, f"no {tag} logged", ha="center", va="center", transform=axes.transAxes)
        positive = [v for series in scalars.values() for _, v in series.get(tag, []) if v > 0]
        if log_scale and positive:
            axes.set_yscale("log")
            plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5, not 5x10^-1
            axes.yaxis.set_major_formatter(plain)
            # Within one decade there is at most one major tick: label the minor ones too.
            axes.yaxis.set_minor_formatter(plain if max(positive) / min(positive) < 10 else NullFormatter())
        axes.set(title=tag, xlabel="optimizer step", ylabel=label)
        axes.grid(alpha=0.3)
    figure.suptitle(f"{' vs '.join(scalars)}: {command}\n(the lines lie on top of each other where the engines agree)")
    figure.savefig(path, dpi=110)


def compare(overrides: list[str], out_dir: Path, train_script: Path, engines: tuple[str, ...] = ENGINES) -> str:
    """Train each engine in turn into <out_dir>/<engine>/ and write the report. Returns the table."""
    check_overrides(overrides)
    engines = check_engines(engines)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for position, engine in enumerate(engines, start=1):
        print(f"[{position}/{len(engines)}] {engine} ...", end=" ", flush=True)
        try:
            seconds = run_engine(engine, train_overrides(overrides), out_dir / engine, train_script)
        except EngineRunFailed as failed:
            print("failed", flush=True)
            print("\n".join(f"    {line}" for line in failed.output_tail), file=sys.stderr, flush=True)
            raise
        runs.append(read_run(engine, out_dir / engine, seconds))
        print(f"done in {seconds:.1f} s, test/acc {runs[-1].metrics['test/acc']:.4f}", flush=True)
    return write_report(runs, overrides, out_dir, project_root=train_script.parent)


# -- which settings each rung implements (the tables of README.md and COMPARISON.md) --

ALL = "yes"
DEFAULT_ONLY = "its default only"


def implemented_settings() -> dict[str, dict[str, str]]:
    """Per setting of configs/ that a rung may leave out (every key of configs/trainer, then the others of
    run/config_rules.py's NEUTRAL, then the logger), per engine: "yes", or the one value it accepts in a code span.

    Read from the code: engines/minimal.py's and engines/fabric.py's IMPLEMENTED_KEYS, engines/raw.py's
    SUPPORTED_TRAINER_KEYS; engine=lightning hands every trainer key to lightning.Trainer and implements the rest."""
    # Imported here: the engines import torch (and fabric lightning), which the rest of compare.py never needs.
    from ..engines import fabric, minimal, raw
    from ..run.config_rules import FIGURE_SWITCHES, NEUTRAL, RUNG_TRAINER_KEYS, shown

    settings = [f"trainer.{key}" for key in RUNG_TRAINER_KEYS] + list(NEUTRAL)
    implemented = {
        "minimal": minimal.IMPLEMENTED_KEYS,
        "fabric": fabric.IMPLEMENTED_KEYS,
        "raw": {f"trainer.{key}" for key in raw.SUPPORTED_TRAINER_KEYS} | {s for s in NEUTRAL if "trainer." not in s},
        "lightning": set(settings),
    }
    table = {}
    for setting in settings:
        table[setting] = {}
        for engine in ENGINES:
            every_rung = setting.removeprefix("trainer.") in RUNG_TRAINER_KEYS
            table[setting][engine] = (
                ALL if every_rung or setting in implemented[engine] else f"`{shown(NEUTRAL[setting])}` only"
            )
    table["logger"] = {
        "minimal": "`tensorboard` or `none`",
        "fabric": "`tensorboard` or `none`",
        "raw": ALL,
        "lightning": ALL,
    }
    scalars_only = "`null` or off only (scalars)"
    table["logger.tensorboard.{" + ",".join(FIGURE_SWITCHES) + "}"] = {
        "minimal": scalars_only,
        "fabric": scalars_only,
        "raw": ALL,
        "lightning": ALL,
    }
    return table


def settings_table(grouped: bool = False) -> str:
    """implemented_settings() as a Markdown table: a row per setting, or (`grouped`, for the README) a row per
    way the rungs treat a setting, naming the trainer's keys without their `trainer.` prefix."""
    table = implemented_settings()
    header = ["| setting | " + " | ".join(ENGINES) + " |", "| --- |" + " --- |" * len(ENGINES)]
    if not grouped:
        return "\n".join(header + [f"| `{s}` | " + " | ".join(cells.values()) + " |" for s, cells in table.items()])
    groups: dict[tuple[str, ...], list[str]] = {}
    for setting, cells in table.items():
        pattern = tuple(DEFAULT_ONLY if cell.endswith("` only") else cell for cell in cells.values())
        groups.setdefault(pattern, []).append(f"`{setting.removeprefix('trainer.')}`")
    header[0] = "| `trainer.` keys and other settings | " + " | ".join(ENGINES) + " |"
    return "\n".join(
        header + [f"| {', '.join(names)} | " + " | ".join(pattern) + " |" for pattern, names in groups.items()]
    )


def current_dir_relative(path: Path) -> str:
    """`path` relative to the working folder when it is inside it (shorter to print), else as is."""
    try:
        return str(path.relative_to(os.getcwd()))
    except ValueError:
        return str(path)
