"""engine=raw starts as fast as torch allows: it imports neither torchmetrics nor scikit-learn."""

import subprocess
import sys


def test_the_raw_engine_starts_without_torchmetrics_or_scikit_learn():
    """Its start-up is torch's and the first optimizer's: torchmetrics (with torchvision's models) and scikit-learn
    (with scipy) add seconds to it{% if cookiecutter.include_benchmarks %} (benchmarks/README.md){% endif %}. Lightning imports torchmetrics itself."""
    code = (
        "import sys\n"
        "import {{ cookiecutter.package }}.workflows.launch\n"
        "import {{ cookiecutter.package }}.engines.raw\n"
        "print(sorted({'torchmetrics', 'sklearn', 'scipy', 'torchvision', 'lightning'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
