"""serve.py: a real HTTP server on a free loopback port, asked with a real HTTP client. Its answers are predict.py's,
concurrent requests are all answered (and batched), each hostile request gets a 4xx with a clear message while the
server goes on serving, slow and idle clients are dropped within the timeouts, and Ctrl-C ends it in one line."""

import http.client
import io
import json
import queue
import signal
import socket
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

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.workflows.prediction import predict
from {{ cookiecutter.package }}.workflows.serving import serve

pytest.importorskip("fastapi", reason='the serve extra: pip install -e ".[serve]"')
pytest.importorskip("uvicorn", reason='the serve extra: pip install -e ".[serve]"')

START_DEADLINE_S = 300  # only a server that hangs reaches it: it prints its address once it has loaded the model
MAX_BODY_BYTES = 20_000
TIMEOUT_S = 1.0  # the module server's header_timeout_s, body_timeout_s and keep_alive_s
MARGIN_S = 5.0  # how late after its timeout a slow client may be dropped (a loaded machine)
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
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
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
        *(f"{key}={TIMEOUT_S}" for key in ("header_timeout_s", "body_timeout_s", "keep_alive_s")),
    )
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)  # no request, however hostile, logged one


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
    "a form without a file": (
        b'--b0\r\nContent-Disposition: form-data; name="image"\r\n\r\n3\r\n--b0--\r\n',
        "multipart/form-data; boundary=b0",
        400,
        "the form holds no file, only fields: send curl --data-binary @digit.png",
    ),
    "a form without its boundary": (
        b"--b0\r\n\r\n",
        "multipart/form-data",
        400,
        "the multipart/form-data body is malformed",
    ),
    "curl -d @digit.png": (
        b"\x89PNG\x1a\x00\x00\x00\x0dIHDR",  # what is left of a PNG file once curl -d drops its line breaks
        "application/x-www-form-urlencoded",
        400,
        'drops the file\'s line breaks: send curl --data-binary @digit.png -H "Content-Type: image/png"',
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_request_gets_a_4xx_and_the_server_goes_on(case, server, digit_inputs, predicted):
    body, content_type, expected_status, message = HOSTILE[case]
    status, answer = post(f"{server.url}/predict", body, content_type)
    assert status == expected_status and message in answer["error"], answer
    status, answer = post(f"{server.url}/predict", digit_inputs["pngs"][0].read_bytes())  # the next one
    assert status == 200
    same_answer(answer, predicted[str(digit_inputs["pngs"][0])])


def form(*files: tuple[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body as `curl -F file=@<name>` sends it, with its Content-Type."""
    boundary = "------------------------d74496d66958873e"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file{index}"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for index, (name, data) in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_form_upload_gets_predict_pys_answers(server, digit_inputs, predicted):
    first, second = digit_inputs["pngs"][:2]
    status, answer = post(f"{server.url}/predict", *form((first.name, first.read_bytes())))
    assert status == 200, answer
    same_answer(answer, predicted[str(first)])
    status, answer = post(f"{server.url}/predict", *form(*((png.name, png.read_bytes()) for png in (first, second))))
    assert status == 200 and len(answer["predictions"]) == 2, answer
    for one, png in zip(answer["predictions"], (first, second), strict=True):
        same_answer(one, predicted[str(png)])
    status, answer = post(f"{server.url}/predict", *form(("digit.png", b"not a png")))
    assert status == 400 and answer["error"].startswith("the file 'digit.png' is not an image file"), answer


def connect(server: "Server") -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def until_closed(sock: socket.socket, opened: float, deadline_s: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed it (seconds after `opened`)."""
    chunks = []
    while True:
        sock.settimeout(max(0.01, opened + deadline_s - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the connection was still open after {deadline_s} s")
        if not chunk:
            return b"".join(chunks), time.monotonic() - opened
        chunks.append(chunk)


def refusal(raw: bytes) -> tuple[int, str]:
    """The status and {"error"} of a whole HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw[:500]
    return int(head.split()[1]), json.loads(body)["error"]


def dribble(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Sends `data` one byte every 0.1 s until done, stopped or dropped."""
    try:
        for byte in data:
            if stop.is_set():
                return
            sock.sendall(bytes([byte]))
            time.sleep(0.1)
    except OSError:  # the server closed the connection: what a slow client gets
        pass


def test_slow_and_idle_clients_are_dropped_within_the_timeouts_while_others_are_served(server, digit_inputs, predicted):
    headers = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n"
    kinds = {  # what each slow client sends at once, what it dribbles then, and the answer it gets
        "idle": (b"", b"", None),
        "headers, then nothing": (headers, b"", "header_timeout_s=1.0"),
        "headers, a byte at a time": (b"", headers + b"\r\n", "header_timeout_s=1.0"),
        "a body, then nothing": (headers + b"\r\n" + b"\0" * 10, b"", "body_timeout_s=1.0"),
        "a body, a byte at a time": (headers + b"\r\n", b"\0" * 1000, "body_timeout_s=1.0"),
    }
    stop, clients, readers = threading.Event(), [], ThreadPoolExecutor(max_workers=20)
    try:
        for kind, (at_once, dribbled, _) in [item for item in kinds.items() for _ in range(4)]:
            sock = connect(server)
            opened = time.monotonic()
            sock.sendall(at_once)
            threading.Thread(target=dribble, args=(sock, dribbled, stop), daemon=True).start()
            clients.append((kind, sock, readers.submit(until_closed, sock, opened, TIMEOUT_S + MARGIN_S)))
        png = digit_inputs["pngs"][0]
        for _ in range(5):  # the others are served meanwhile
            status, answer = post(f"{server.url}/predict", png.read_bytes())
            assert status == 200
            same_answer(answer, predicted[str(png)])
        for kind, _, closed in clients:
            raw, closed_after = closed.result()
            assert closed_after >= TIMEOUT_S * 0.9, kind  # not before its time either
            expected = kinds[kind][2]
            if expected is None:
                assert raw == b"", kind  # a connection that sent nothing is closed without an answer
            else:
                status, message = refusal(raw)
                assert status == 408 and expected in message, (kind, message)
    finally:
        stop.set()
        readers.shutdown(wait=False)
        for _, sock, _ in clients:
            sock.close()


def test_a_kept_alive_connection_is_closed_once_idle(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", "/health")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    answered = time.monotonic()
    raw, closed_after = until_closed(connection.sock, answered, TIMEOUT_S + MARGIN_S)
    assert raw == b"" and closed_after >= TIMEOUT_S * 0.9
    connection.close()


FIFTY_MB = 50_000_000
RAW_HOSTILE = {  # sent as they are, the way no HTTP library would: (head, what follows, status, message)
    "a 50 MB header": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ",
        b"a" * FIFTY_MB,
        431,
        "the request line and headers are over max_header_bytes=16384 bytes",
    ),
    "a 50 MB body": (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {FIFTY_MB}\r\n\r\n".encode(),
        b"\0" * FIFTY_MB,
        413,
        f"the body is over max_body_bytes={MAX_BODY_BYTES} bytes",
    ),
    "a chunked body over the limit": (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"".join(b"1000\r\n" + b"\0" * 0x1000 + b"\r\n" for _ in range(40)) + b"0\r\n\r\n",
        413,
        f"the body is over max_body_bytes={MAX_BODY_BYTES} bytes",
    ),
    "not HTTP": (b"HELLO\r\n\r\n", b"", 400, "the request is not valid HTTP/1.1"),
    "another path": (b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n", b"", 404, "Not Found: GET /admin; POST /predict"),
    "another method": (b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n", b"", 405, "Method Not Allowed: GET /predict"),
}


@pytest.mark.parametrize("case", RAW_HOSTILE)
def test_a_hostile_connection_gets_its_status_in_json_not_a_reset(case, server, digit_inputs, predicted):
    head, rest, expected_status, message = RAW_HOSTILE[case]
    with connect(server) as sock:
        # All of it first, then the answer, as most clients do: a server that closes without reading the rest
        # resets the connection (BrokenPipeError or ConnectionResetError here), and its answer is lost.
        sock.sendall(head + rest)
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < int(
            raw.lower().partition(b"content-length: ")[2].split(b"\r\n")[0]
        ):
            chunk = sock.recv(65536)
            assert chunk, raw
            raw += chunk
    status, error = refusal(raw)
    assert status == expected_status and message in error, error
    status, answer = post(f"{server.url}/predict", digit_inputs["pngs"][0].read_bytes())  # the next one
    assert status == 200
    same_answer(answer, predicted[str(digit_inputs["pngs"][0])])


def test_a_client_that_leaves_mid_body_and_ctrl_c_end_quietly(model_path, digit_inputs, tmp_path):
    server = Server(tmp_path / "logs", f"model_path={model_path}", "max_wait_ms=0")
    try:
        png = digit_inputs["pngs"][0].read_bytes()
        for _ in range(3):  # leaves after a part of its body
            with connect(server) as sock:
                sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(png)}\r\n\r\n".encode())
                sock.sendall(png[:10])
        status, _ = post(f"{server.url}/predict", png)
        assert status == 200
        server.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        server.process.wait(timeout=30)
    finally:
        server.stop()
    server.reader.join(timeout=30)  # until the end of its output
    output = "".join(server.output)
    assert "Traceback" not in output and "Exception" not in output, output
    after_start = output.split("Ctrl-C stops\n", 1)[1].splitlines()
    assert after_start == ["serve.py stopped (Ctrl-C)"], output  # one line
    assert server.process.returncode == -signal.SIGINT  # ended by the signal: 130 in a shell, as a server ends


@pytest.mark.parametrize(
    "key, value, accepted",
    [
        ("header_timeout_s", 0, "a number above 0"),
        ("body_timeout_s", -1, "a number above 0"),
        ("keep_alive_s", "soon", "a number above 0"),
        ("max_header_bytes", 0.5, "a whole number"),
    ],
)
def test_a_bad_timeout_or_limit_is_one_line(key, value, accepted):
    cfg = OmegaConf.load(PROJECT_ROOT / "configs" / "serve.yaml")
    cfg[key] = value
    with pytest.raises(UserError, match=rf"^{key}=.* is not valid: {accepted}"):
        serve(cfg)  # refused before it loads anything


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
