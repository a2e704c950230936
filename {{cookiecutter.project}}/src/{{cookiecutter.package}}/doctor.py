"""Check that PyTorch and the project's libraries are installed and working.

    python -m <package>.doctor            # versions, devices, a matmul + backward per device
    python -m <package>.doctor --require-gpu   # also fail when no CUDA/ROCm/MPS/XPU device works

Prints one line per library and per device and exits with status 1, after printing advice
(which pip command or wheel index to use), when something is missing or broken.
Only the standard library is imported at module level, so the doctor still runs, and
explains, when torch itself is missing or broken; lightning is imported only while checking it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WHEEL_INDEX = "https://download.pytorch.org/whl"
MIN_PYTHON = (3, 10)

# (import name, distribution name on PyPI): every runtime dependency of the project.
PACKAGES = [
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("lightning", "lightning"),
    ("hydra", "hydra-core"),
    ("torchmetrics", "torchmetrics"),
    ("tensorboard", "tensorboard"),
    ("numpy", "numpy"),
    ("sklearn", "scikit-learn"),
    ("matplotlib", "matplotlib"),
    ("PIL", "pillow"),
    ("tqdm", "tqdm"),
]


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    def fail(self, problem: str, advice: str | None = None) -> None:
        self.problems.append(problem)
        if advice and advice not in self.advice:
            self.advice.append(advice)

    def hint(self, advice: str) -> None:
        if advice not in self.advice:
            self.advice.append(advice)


def package_name() -> str:
    return __package__ or Path(__file__).resolve().parent.name


def suggested_index() -> tuple[str, str]:
    """Guess the right PyTorch wheel flavour for this machine: (label, pip arguments)."""
    if sys.platform == "darwin":
        return "macOS (CPU + MPS in one wheel)", "pip install torch torchvision"
    if shutil.which("nvidia-smi"):
        return "NVIDIA GPU found", f"pip install torch torchvision --index-url {WHEEL_INDEX}/cu126"
    if shutil.which("rocminfo") or Path("/opt/rocm").exists():
        return "AMD ROCm found", f"pip install torch torchvision --index-url {WHEEL_INDEX}/rocm6.4"
    return "no GPU toolkit found", f"pip install torch torchvision --index-url {WHEEL_INDEX}/cpu"


def torch_install_advice() -> str:
    label, command = suggested_index()
    return (
        f"Install PyTorch from the official wheel index ({label}):\n"
        f"      {command}\n"
        f"    Other builds: {WHEEL_INDEX}/cpu, {WHEEL_INDEX}/cu126, {WHEEL_INDEX}/cu128, "
        f"{WHEEL_INDEX}/rocm6.4; see https://pytorch.org/get-started/locally/ for the current list.\n"
        "    Install torch and torchvision from the SAME index in ONE command, so their versions match;\n"
        "    with uv: uv pip install torch torchvision --index-url <the same URL>."
    )


def version_of(module, distribution: str) -> str:
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version)


def check_python(report: Report) -> None:
    implementation = platform.python_implementation()
    where = f"{platform.system()} {platform.machine()}"
    print(f"  {'Python':<13}{platform.python_version()} ({implementation}, {where}) at {sys.executable}")
    if sys.version_info < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        report.fail(f"Python {platform.python_version()} is too old", f"Use Python {wanted} or newer.")
    if sys.platform == "darwin" and platform.machine() == "x86_64" and platform.processor() == "i386":
        report.hint("On Apple silicon, use a native arm64 Python (not one running under Rosetta) to get MPS.")


def check_packages(report: Report) -> bool:
    """Import every package and print its version. Returns whether torch imported."""
    torch_ok = False
    missing, broken = [], []
    for module_name, distribution in PACKAGES:
        try:
            module = importlib.import_module(module_name)  # lightning is imported here, lazily
        except ImportError as err:
            print(f"  {module_name:<13}MISSING ({err})")
            report.fail(f"{module_name} is not importable")
            missing.append(distribution)
            continue
        except Exception as err:  # a broken install can fail with anything, e.g. OSError from a .so
            print(f"  {module_name:<13}BROKEN ({type(err).__name__}: {err})")
            report.fail(f"{module_name} fails to import")
            broken.append(distribution)
            continue
        print(f"  {module_name:<13}{version_of(module, distribution)}")
        torch_ok = torch_ok or module_name == "torch"

    if {"torch", "torchvision"} & set(missing + broken):
        report.hint(torch_install_advice())
    others = [name for name in missing if name not in ("torch", "torchvision")]
    if others:
        report.hint(
            "Install the project with its dependencies, from the project folder: pip install -e .\n"
            f"    (or only what is missing: pip install {' '.join(others)})"
        )
    others = [name for name in broken if name not in ("torch", "torchvision")]
    if others:
        report.hint(f"Reinstall what fails to import: pip install --force-reinstall {' '.join(others)}")
    return torch_ok


def check_torchvision_ops(report: Report) -> None:
    """A torch/torchvision version mismatch typically shows up as missing C++ operators."""
    try:
        import torch
        import torchvision
    except Exception:  # already reported by check_packages
        return
    try:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
        kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
        assert kept.tolist() == [0, 2], kept.tolist()
    except Exception as err:
        report.fail(
            f"torchvision {torchvision.__version__} does not work with torch {torch.__version__}: {err}",
            torch_install_advice(),
        )


def available_devices(report: Report) -> list[str]:
    import torch

    cuda_build, hip_build = torch.version.cuda, getattr(torch.version, "hip", None)
    print(f"  {'CUDA build':<13}{cuda_build or 'no'}")
    print(f"  {'ROCm build':<13}{hip_build or 'no'}")
    devices = ["cpu"]

    cuda_available = torch.cuda.is_available()
    status = f"available, {torch.cuda.device_count()} device(s)" if cuda_available else "not available"
    print(f"  {'CUDA/ROCm':<13}{status}")
    if cuda_available:
        for index in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(index)
            capability = ".".join(map(str, torch.cuda.get_device_capability(index)))
            print(f"    cuda:{index}  {name} (compute capability {capability})")
            devices.append(f"cuda:{index}")
        if torch.backends.cudnn.is_available():
            print(f"  {'cuDNN':<13}{torch.backends.cudnn.version()}")
    elif shutil.which("nvidia-smi"):
        if cuda_build is None:
            advice = torch_install_advice()
            report.hint(f"An NVIDIA GPU is present but this torch is a CPU-only build.\n    {advice}")
        else:
            report.hint(
                "An NVIDIA GPU is present and torch was built for CUDA, but CUDA is not usable: check that "
                "`nvidia-smi` works and that the driver supports CUDA "
                f"{cuda_build} (a wheel for an older CUDA, e.g. {WHEEL_INDEX}/cu126, needs an older driver)."
            )

    mps_built = torch.backends.mps.is_built()
    mps_available = torch.backends.mps.is_available()
    status = "available" if mps_available else "built, not available" if mps_built else "not built"
    print(f"  {'MPS':<13}{status}")
    if mps_available:
        devices.append("mps")
    elif sys.platform == "darwin" and platform.machine() == "arm64":
        report.hint("This is an Apple silicon Mac but MPS is unavailable: update macOS (12.3+) and torch.")

    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        for index in range(xpu.device_count()):
            print(f"    xpu:{index}  {xpu.get_device_name(index)}")
            devices.append(f"xpu:{index}")
    return devices


def check_device(device: str) -> str:
    """Run a matmul and a backward pass on ``device`` and compare with float64 on the CPU.

    Returns a short description on success and raises on failure.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    a_cpu, b_cpu = torch.randn(64, 32, generator=gen), torch.randn(32, 16, generator=gen)
    start = time.perf_counter()
    a = a_cpu.to(device).requires_grad_()
    b = b_cpu.to(device).requires_grad_()
    out = a @ b
    out.sum().backward()
    product, grad_a, grad_b = out.detach().cpu(), a.grad.cpu(), b.grad.cpu()  # .cpu() waits for the device
    elapsed = time.perf_counter() - start

    expected = a_cpu.double() @ b_cpu.double()
    # d sum(a @ b) / da = ones @ b^T and d sum(a @ b) / db = a^T @ ones
    expected_grad_a = b_cpu.double().sum(dim=1).expand(64, 32)
    expected_grad_b = a_cpu.double().sum(dim=0).unsqueeze(1).expand(32, 16)
    for name, got, want in [
        ("matmul", product, expected),
        ("grad a", grad_a, expected_grad_a),
        ("grad b", grad_b, expected_grad_b),
    ]:
        if not torch.allclose(got.double(), want, rtol=1e-2, atol=1e-2):
            error = (got.double() - want).abs().max().item()
            raise AssertionError(f"{name} differs from the CPU float64 reference by up to {error:.3g}")
    return f"{elapsed * 1000:.1f} ms"


def check_devices(report: Report, devices: list[str], require_gpu: bool) -> None:
    working = []
    for device in devices:
        try:
            detail = check_device(device)
        except Exception as err:
            print(f"  {device}: matmul+backward FAILED ({type(err).__name__}: {err})")
            report.fail(
                f"{device}: matmul+backward failed",
                "Check the GPU driver and that the torch build matches it (see the wheel index advice).\n    "
                + torch_install_advice(),
            )
            continue
        print(f"  {device}: matmul+backward ok ({detail})")
        working.append(device)
    if require_gpu and working == ["cpu"]:
        report.fail("--require-gpu was given but no accelerator works", torch_install_advice())


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog=f"python -m {package_name()}.doctor", description=summary)
    parser.add_argument("--require-gpu", action="store_true", help="fail unless an accelerator passes the check")
    args = parser.parse_args(argv)

    report = Report()
    print(f"{package_name()} doctor")
    print("Versions")
    check_python(report)
    torch_ok = check_packages(report)
    if torch_ok:
        check_torchvision_ops(report)
        print("Accelerators")
        devices = available_devices(report)
        print("Device checks")
        check_devices(report, devices, args.require_gpu)

    if report.advice:
        print("Advice")
        for item in report.advice:
            print(f"  - {item}")
    if report.problems:
        print(f"FAILED: {len(report.problems)} problem(s)")
        for problem in report.problems:
            print(f"  - {problem}")
        return 1
    print("All checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
