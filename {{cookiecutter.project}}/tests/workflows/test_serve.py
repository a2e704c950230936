"""serve.py: a real HTTP server on a free loopback port, asked with a real HTTP client. Its answers are predict.py's,
concurrent requests are all answered (and batched), and each hostile request gets a 4xx with a clear message while
the server goes on serving."""

import io
import json
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, run_dirs
from omegaconf import OmegaConf

from {{ cookiecutter.package }}.workflows.prediction import predict

pytest.importorskip("fastapi", reason='the serve extra: pip install -e ".[serve]"')
pytest.importorskip("uvicorn", reason='the serve extra: pip install -e ".[serve]"')

START_DEADLINE_S = 300  # only a server that hangs reaches it: it prints its address once it has loaded the model
MAX_BODY_BYTES = 20_000
pytestmark = pytest.mark.slow


class Server:
    """`python serve.py ... port=0` in its own process; the address comes from its first line."""

    def __init__(self, log_dir: Path, *overrides: str) -> None:
        command = [sys.executable, "serve.py", f"paths.log_dir={log_dir}", "port=0", *overrides]
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._address(started + START_DEADLINE_S)
        # Ready once /health answers: the deadline scales with how long the process took to get this far.
        self._wait_healthy(time.monotonic() + max(30.0, 5 * (time.monotonic() - started)))

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _address(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            if self.process.poll() is not None and self.lines.empty():
                pytest.fail(f"serve.py exited with {self.process.returncode}:\n{''.join(self.output)}")
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("serving "):
                return line.split(" on ", 1)[1].split()[0]
        pytest.fail(f"serve.py printed no address in {START_DEADLINE_S} s:\n{''.join(self.output)}")

    def _wait_healthy(self, deadline: float) -> None:
        pause = 0.05
        while True:
            try:
                if get(f"{self.url}/health")["status"] == "ok":
                    return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    pytest.fail(f"{self.url}/health never answered:\n{''.join(self.output)}")
            time.sleep(pause)  # a back-off between polls, not a wait for the server
            pause = min(2 * pause, 1.0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post(url: str, body: bytes, content_type: str = "image/png") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def model_path(exports) -> Path:
    folder, result = exports["raw"]
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / ("model.onnx" if (folder / "model.onnx").is_file() else "model.pt2")


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    """One server for the module; batches wait up to 200 ms for more images, so that concurrent requests batch."""
    server = Server(
        tmp_path_factory.mktemp("serve") / "logs",
        f"model_path={model_path}",
        f"max_body_bytes={MAX_BODY_BYTES}",
        "max_wait_ms=200",
        "max_batch_size=32",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def predicted(model_path, digit_inputs, tmp_path_factory) -> dict[str, dict]:
    """predict.py's results for the same model and inputs, by input name."""
    cfg = OmegaConf.create(
        {"model_path": str(model_path), "inputs": str(digit_inputs["folder"]), "output": None, "batch_size": 256}
    )
    results, _ = predict(cfg, tmp_path_factory.mktemp("predict"))
    return {result["input"]: result for result in results}


def same_answer(answer: dict, expected: dict) -> None:
    assert (answer["class"], answer["label"]) == (expected["class"], expected["label"])
    assert answer["probabilities"].keys() == expected["probabilities"].keys()
    for label, p in expected["probabilities"].items():
        assert answer["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_health(server, model_path):
    health = get(f"{server.url}/health")
    assert health["model"] == str(model_path) and health["classes"] == [str(d) for d in range(10)]
    assert health["input"]["shape"] == ["batch", 1, 8, 8]
    assert server.url.startswith("http://127.0.0.1:")  # loopback by default


def test_images_and_arrays_get_predict_pys_answers(server, digit_inputs, predicted):
    for png in digit_inputs["pngs"]:
        status, answer = post(f"{server.url}/predict", png.read_bytes())
        assert status == 200, answer
        same_answer(answer, predicted[str(png)])
    stack = np.load(digit_inputs["stack"])
    status, answer = post(f"{server.url}/predict", json.dumps(stack[0].tolist()).encode(), "application/json")
    assert status == 200, answer
    same_answer(answer, predicted[f"{digit_inputs['stack']}[0]"])
    status, answer = post(f"{server.url}/predict", json.dumps(stack.tolist()).encode(), "application/json")
    assert status == 200 and len(answer["predictions"]) == len(stack)
    for index, one in enumerate(answer["predictions"]):
        same_answer(one, predicted[f"{digit_inputs['stack']}[{index}]"])


def test_twenty_concurrent_requests_are_all_answered_in_batches(server, digit_inputs, predicted):
    pngs = [digit_inputs["pngs"][index % len(digit_inputs["pngs"])] for index in range(20)]
    before = get(f"{server.url}/health")["batches"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda png: post(f"{server.url}/predict", png.read_bytes()), pngs))
    for png, (status, answer) in zip(pngs, answers, strict=True):
        assert status == 200, answer
        same_answer(answer, predicted[str(png)])
    health = get(f"{server.url}/health")
    assert health["batches"] - before < 20 and health["largest_batch"] > 1  # requests shared forward passes


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


HOSTILE = {
    "not an image": (b"GIF89a but not really", "image/png", 400, "the body is not an image file"),
    "a huge upload": (
        b"\0" * (10 * MAX_BODY_BYTES),
        "application/octet-stream",
        413,
        f"the body is over max_body_bytes={MAX_BODY_BYTES} bytes",
    ),
    "wrong channels": (png_bytes(np.zeros((8, 8, 3), np.uint8)), "image/png", 400, "has 3 channels (mode RGB)"),
    "wrong size": (png_bytes(np.zeros((28, 28), np.uint8)), "image/png", 400, "is 28x28 pixels: the model takes 8x8"),
    "wrong shape": (json.dumps([[0.5] * 5] * 3).encode(), "application/json", 400, "the JSON array has shape (3, 5)"),
    "ragged": (b"[[0.1, 0.2], [0.3]]", "application/json", 400, "the JSON array is not rectangular"),
    "out of range": (json.dumps([[2.5] * 8] * 8).encode(), "application/json", 400, "holds floats outside [0, 1]"),
    "malformed JSON": (b"[[0.1, 0.2", "application/json", 400, "the body is not valid JSON"),
    "a JSON object": (b'{"image": 1}', "application/json", 400, "the JSON body is a dict"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_request_gets_a_4xx_and_the_server_goes_on(case, server, digit_inputs, predicted):
    body, content_type, expected_status, message = HOSTILE[case]
    status, answer = post(f"{server.url}/predict", body, content_type)
    assert status == expected_status and message in answer["error"], answer
    status, answer = post(f"{server.url}/predict", digit_inputs["pngs"][0].read_bytes())  # the next one
    assert status == 200
    same_answer(answer, predicted[str(digit_inputs["pngs"][0])])


def test_a_checkpoint_is_served_as_predict_py_predicts_it(short_runs, digit_inputs, tmp_path):
    checkpoint = run_dirs(short_runs[0], "lightning")[-1] / "checkpoints" / "best.ckpt"
    cfg = OmegaConf.create(
        {"model_path": str(checkpoint), "inputs": str(digit_inputs["pngs"][1]), "output": None, "batch_size": 256}
    )
    (expected,), _ = predict(cfg, tmp_path / "predict")
    server = Server(tmp_path / "logs", f"model_path={checkpoint}", "max_wait_ms=0")
    try:
        status, answer = post(f"{server.url}/predict", digit_inputs["pngs"][1].read_bytes())
        assert status == 200, answer
        same_answer(answer, expected)
    finally:
        server.stop()


def test_a_port_in_use_is_one_line(server, model_path, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "serve.py", f"paths.log_dir={tmp_path / 'logs'}", f"port={port}", f"model_path={model_path}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on host=127.0.0.1 port={port}")
    assert not (tmp_path / "logs" / "serve").exists()
