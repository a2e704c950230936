"""make demo: bake the template with its defaults into build/, train both engines, print a comparison.

Run through `make demo`, which first creates .venv with the pinned dev requirements.
"""

import json
import subprocess
import sys
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
BUILD = TEMPLATE / "build"
ENGINES = ("raw", "lightning")


def main() -> int:
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(BUILD), overwrite_if_exists=True))
    print(f"baked {project.relative_to(TEMPLATE)}; installing it into {sys.prefix}", flush=True)
    # The dependencies are the pinned ones already in .venv: install only the project itself.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "-e", str(project)], check=True)
    rows = []
    for engine in ENGINES:
        print(f"\n== python train.py engine={engine}", flush=True)
        before = set((project / "logs" / "train" / engine).glob("*"))
        subprocess.run([sys.executable, "train.py", f"engine={engine}"], cwd=project, check=True)
        [run_dir] = set((project / "logs" / "train" / engine).glob("*")) - before
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append((engine, f"{metrics['test/acc']:.4f}", f"{metrics['wall_time_s']:.1f} s",
                     str(run_dir.relative_to(TEMPLATE))))

    header = ("engine", "test accuracy", "wall time", "run folder")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\nCurves: .venv/bin/tensorboard --logdir {project.relative_to(TEMPLATE)}/logs --host 127.0.0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
