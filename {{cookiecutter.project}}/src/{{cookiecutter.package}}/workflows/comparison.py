"""Train both engines with the same config and compare them: the logic behind compare.py.

Each engine runs as its own `python train.py engine=<engine> <overrides>` process, so its start-up time and
memory are its own and Lightning never enters the raw run's process. The report is read back from what the
runs wrote: metrics.json and the TensorBoard events. Nothing here imports torch or lightning.
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..core.errors import UserError

ENGINES = ("raw", "lightning")
ENGINES_DIR = Path(__file__).parents[1] / "engines"
# Each engine's own code: for engine=lightning its parity callbacks count too (without them its numbers differ).
ENGINE_FILES = {"raw": ("raw.py",), "lightning": ("lightning.py", "lightning_parity.py")}
LINES_OF_CODE = (
    "lines of code of each engine: raw.py; lightning.py + lightning_parity.py (no blank, comment, docstring)"
)
# One value for the pair, in the "lightning vs raw" column: max |lightning - raw| over every step both logged.
LOSS_DIFFERENCE = "largest train/loss difference between the engines, over all steps both logged"
BENCHMARK_SCRIPT = "benchmarks/engine_overhead.py"  # relative to the project root, as train.py is
BENCHMARK_README = "benchmarks/README.md"
OUTPUT_TAIL_LINES = 15  # of a failed engine run, shown above the error line
# The panels of comparison.png: (TensorBoard tag, y-axis label, log scale).
PANELS = (
    ("train/loss", "training loss (per logged step)", True),
    ("val/loss", "validation loss (per epoch)", True),
    ("val/acc", "validation accuracy (per epoch)", False),
)
# Two lines that lie on top of each other when the engines agree: a wide pale one and a thin dashed one.
STYLES = {
    "raw": {"color": "tab:blue", "linewidth": 4, "alpha": 0.45, "marker": "o"},
    "lightning": {"color": "tab:red", "linewidth": 1.5, "linestyle": "--", "marker": "x"},
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


def check_overrides(overrides: list[str]) -> None:
    """compare.py passes every override on to both engines, except the ones that would make them differ."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == "engine" or key.startswith("engine."):
            raise UserError(
                f"{override}: compare.py always trains both engines (raw, then lightning) with the same "
                f"config; remove it, or train one engine with: python train.py {override}"
            )
        if key == "ckpt_path":
            raise UserError(
                f"{override}: compare.py trains both engines from scratch, and a checkpoint belongs to one "
                "engine's run; resume it with: python train.py engine=<engine> " + override
            )


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


def difference(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    return "identical" if a == b else f"difference {b - a:+.2e}"


def loss_difference(largest: float, step: int | None, compared: int) -> str:
    """The cell of the per-step row: one value, the largest absolute difference, and where it occurs."""
    if not compared:
        return "n/a (no step logged by both engines)"
    if largest == 0:
        return f"{largest:.2e} (identical at all {compared} steps)"
    return f"{largest:.2e} (at step {step}, of {compared} steps)"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "n/a"
    return f"ratio {b / a:.2f}"


def table_rows(raw: EngineRun, lit: EngineRun) -> list[tuple[str, str, str, str]]:
    """(what, raw, lightning, lightning vs raw) for every row of comparison.md."""
    runs = (raw, lit)
    per_step = largest_difference(raw.scalars.get("train/loss", []), lit.scalars.get("train/loss", []))
    epoch_s = [statistics.median(r.metrics["epoch_times_s"]) if r.metrics["epoch_times_s"] else None for r in runs]
    steps_per_s = [
        r.metrics["global_step"] / sum(r.metrics["epoch_times_s"]) if r.metrics["epoch_times_s"] else None for r in runs
    ]
    rows = []
    for label, key in (
        ("final train/loss (last step)", "train/loss"),
        ("val/acc (last epoch)", "val/acc"),
        ("test/acc (best checkpoint)", "test/acc"),
    ):
        a, b = raw.metrics.get(key), lit.metrics.get(key)
        rows.append((label, number(a), number(b), difference(a, b)))
    rows.append((LOSS_DIFFERENCE, "", "", loss_difference(*per_step)))  # a value of the pair, not of each engine
    startup = [r.metrics.get("startup_s") for r in runs]
    seconds = [r.seconds for r in runs]
    rss = [r.metrics.get("peak_rss_mb") for r in runs]
    rows += [
        (
            "time per epoch, median, training + validation (s)",
            number(epoch_s[0], 3),
            number(epoch_s[1], 3),
            ratio(*epoch_s),
        ),
        (
            "optimizer steps per second (steps / time in epochs)",
            number(steps_per_s[0], 1),
            number(steps_per_s[1], 1),
            ratio(*steps_per_s),
        ),
        (
            "start-up, process start to first training step (s)",
            number(startup[0], 2),
            number(startup[1], 2),
            ratio(*startup),
        ),
        ("whole `python train.py` process (s)", number(seconds[0], 2), number(seconds[1], 2), ratio(*seconds)),
        ("peak memory of the process, RSS (MB)", number(rss[0], 1), number(rss[1], 1), ratio(*rss)),
    ]
    cuda = [r.metrics.get("peak_cuda_mb") for r in runs]
    if None not in cuda and any(str(r.metrics.get("device")).startswith("cuda") for r in runs):
        rows.append(("peak CUDA memory allocated (MB)", number(cuda[0], 1), number(cuda[1], 1), ratio(*cuda)))
    loc = [sum(code_lines(ENGINES_DIR / name) for name in ENGINE_FILES[r.engine]) for r in runs]
    rows.append((LINES_OF_CODE, str(loc[0]), str(loc[1]), ratio(*loc)))
    return rows


def markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| | raw | lightning | lightning vs raw |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {label} | {a} | {b} | {versus} |" for label, a, b, versus in rows]
    return "\n".join(lines)


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


def write_report(
    raw: EngineRun, lit: EngineRun, overrides: list[str], out_dir: Path, project_root: Path | None = None
) -> str:
    """Write comparison.md and comparison.png into `out_dir`; return the table.

    `project_root` (the folder of train.py) makes the pointer to the benchmark's README a link."""
    table = markdown_table(table_rows(raw, lit))
    command = " ".join(["python compare.py", *overrides])
    report = f"""# engine=raw vs engine=lightning

`{command}` on {datetime.now():%Y-%m-%d %H:%M}, device `{raw.metrics.get("device")}`, seed {raw.metrics.get("seed")}.
Both engines trained with the same config as separate `python train.py` processes; their run folders are
[raw/](raw/) and [lightning/](lightning/) (outputs of the processes: raw.log, lightning.log).

{table}

* Accuracies and the final loss are metrics.json values. The per-step row is one value for the pair: the
  largest absolute difference |lightning - raw| of the `train/loss` TensorBoard scalars over all the steps both
  engines logged (`trainer.log_every_n_steps`), and the step where it occurs.
* Time per epoch is metrics.json `epoch_times_s` (training and the validation pass); start-up is `startup_s`
  (imports, config, data and model, up to the first training step).
* The timings are from one run of each engine, so they move with whatever else the machine was doing. For
  the engines' overhead measured with repeats, interleaved, against a bare PyTorch loop, run
  `python {BENCHMARK_SCRIPT}`; its method and measured figures are in {benchmark_readme(out_dir, project_root)}.

![loss and accuracy curves of both engines](comparison.png)
"""
    (out_dir / "comparison.md").write_text(report)
    plot_curves({"raw": raw.scalars, "lightning": lit.scalars}, out_dir / "comparison.png", command)
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
    figure.suptitle(f"raw vs lightning: {command}\n(the lines lie on top of each other where the engines agree)")
    figure.savefig(path, dpi=110)


def compare(overrides: list[str], out_dir: Path, train_script: Path) -> str:
    """Train raw, then lightning, into <out_dir>/<engine>/, and write the report. Returns the table."""
    check_overrides(overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = {}
    for position, engine in enumerate(ENGINES, start=1):
        print(f"[{position}/{len(ENGINES)}] {engine} ...", end=" ", flush=True)
        try:
            seconds = run_engine(engine, overrides, out_dir / engine, train_script)
        except EngineRunFailed as failed:
            print("failed", flush=True)
            print("\n".join(f"    {line}" for line in failed.output_tail), file=sys.stderr, flush=True)
            raise
        runs[engine] = read_run(engine, out_dir / engine, seconds)
        print(f"done in {seconds:.1f} s, test/acc {runs[engine].metrics['test/acc']:.4f}", flush=True)
    return write_report(runs["raw"], runs["lightning"], overrides, out_dir, project_root=train_script.parent)


def current_dir_relative(path: Path) -> str:
    """`path` relative to the working folder when it is inside it (shorter to print), else as is."""
    try:
        return str(path.relative_to(os.getcwd()))
    except ValueError:
        return str(path)
