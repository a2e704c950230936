"""serve.py's logic: a model, as predict.py takes it, behind an HTTP server (127.0.0.1 by default: this machine only).

FastAPI on uvicorn: maintained, widely used, and asynchronous, so that requests that arrive together are batched
here in a few lines (Batcher). TorchServe is in limited maintenance; LitServe, Lightning's server, is built on these
same two and batches by itself, but could not be installed and checked offline against this project's pinned torch
and lightning. They are the optional `serve` extra.

  GET  /health   {"status": "ok", the model file, its input and classes, the batches run so far}
  POST /predict  an image file as the body (any Content-Type but application/json; e.g. image/png) -> one result,
                 as predict.py writes it; or a JSON array of pixel values (Content-Type: application/json), channels
                 last, one image or a stack (prediction.images_from_array) -> one result or {"predictions": [...]}

A request the server cannot answer gets a 4xx status and {"error": "<one line>"}: 400 for a body that is not an
image, has the wrong size or channels, is malformed JSON or an array of the wrong shape or values, 413 for a body
over max_body_bytes. Nothing a request sends stops the server.
"""

import asyncio
import importlib.util
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..core.errors import UserError
from ..run.config_rules import BOOLEAN, NON_NEGATIVE, WHOLE_0, WHOLE_1, Rule, one_of, shown
from .prediction import BadInput, Model, image_from_bytes, image_shapes, images_from_array, load_model

SERVE_EXTRA = 'pip install -e ".[serve]" (fastapi, uvicorn)'
DRAIN_FACTOR = 16  # a body over the limit is read (and dropped) up to this many times it, so that the client gets
# the 413 answer instead of a reset connection; beyond, the connection is closed
RULES = {
    "host": Rule(
        "an address to listen on, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
        lambda v: isinstance(v, str) and bool(v.strip()),
    ),
    "port": Rule("a port number from 0 (any free port) to 65535", lambda v: WHOLE_0.test(v) and v <= 65535),
    "max_body_bytes": WHOLE_1,
    "max_batch_size": WHOLE_1,
    "max_wait_ms": NON_NEGATIVE,
    "log_level": one_of("critical", "error", "warning", "info", "debug", "trace"),
    "access_log": BOOLEAN,
}


class Refused(Exception):
    """A request answered with a 4xx status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Batcher:
    """Runs the images of concurrent requests as one batch: the first waiting image starts a batch, which takes in
    what else arrives within max_wait_s, up to max_batch_size images; the model runs in a worker thread, so that
    requests keep arriving meanwhile."""

    def __init__(self, model: Model, max_batch_size: int, max_wait_s: float) -> None:
        self.model, self.max_batch_size, self.max_wait_s = model, max_batch_size, max_wait_s
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.batches, self.largest = 0, 0

    async def probabilities(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures, strict=True):
            self.queue.put_nowait((image, future))
        return list(await asyncio.gather(*futures))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            try:
                rows = await asyncio.to_thread(
                    self.model.probabilities, [image for image, _ in batch], self.max_batch_size
                )
            except Exception as err:  # answered as a 500 to each request of the batch; the server goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches, self.largest = self.batches + 1, max(self.largest, len(batch))
            for (_, future), row in zip(batch, rows, strict=True):
                if not future.done():  # its client may have gone
                    future.set_result(row)


async def read_body(request: Any, limit: int) -> bytes:
    """The request's body, refused (413) once it is over `limit` bytes."""
    refusal = f"the body is over max_body_bytes={limit} bytes: send a smaller file (one image of the model's size)"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit * DRAIN_FACTOR:
        raise Refused(413, refusal)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit * DRAIN_FACTOR:
            break
    if size > limit:
        raise Refused(413, refusal)
    return b"".join(chunks)


def parse_array(body: bytes) -> np.ndarray:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, nesting too deep
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise Refused(400, f"the body is not valid JSON ({reason}): send an array of pixel values") from None
    if not isinstance(value, list):
        raise Refused(400, f"the JSON body is a {type(value).__name__}, not an array of pixel values")
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise Refused(400, "the JSON array is not rectangular: every row must have the same length") from None


def create_app(model: Model, cfg: DictConfig) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    batcher = Batcher(model, cfg.max_batch_size, cfg.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="image classifier", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": str(model.path),
            "input": model.card["input"],
            "classes": model.classes,
            "batches": batcher.batches,
            "largest_batch": batcher.largest,
        }

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await read_body(request, cfg.max_body_bytes)
        is_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        try:
            if is_json:
                array = parse_array(body)
                images, single = images_from_array(array, model), array.shape in image_shapes(model)
            else:
                images, single = [image_from_bytes(body, model)], True
        except BadInput as err:
            raise Refused(400, f"the {'JSON array' if is_json else 'body'} {err}") from None
        results = [model.result(str(index), row) for index, row in enumerate(await batcher.probabilities(images))]
        for result in results:
            del result["input"]
        return results[0] if single else {"predictions": results}

    return app


def serve(cfg: DictConfig) -> None:
    """Listen on cfg.host:cfg.port (port=0: a free one) and serve cfg.model_path until stopped (Ctrl-C, SIGTERM)."""
    for key, rule in RULES.items():
        if not rule.test(cfg.get(key)):
            raise UserError(f"{key}={shown(cfg.get(key))} is not valid: {rule.accepted}")
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"serve.py needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: {SERVE_EXTRA}"
        )
    import uvicorn

    model = load_model(cfg.model_path)
    app = create_app(model, cfg)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((cfg.host, cfg.port))  # bound here, so that port=0 is known before the server starts
    except OSError as err:
        listener.close()
        raise UserError(
            f"cannot listen on host={cfg.host} port={cfg.port} ({err.strerror or err}): choose another "
            "port (port=0: any free one) or host"
        ) from None
    host, port = listener.getsockname()[:2]
    url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}"
    print(f"serving {model.path} on {url} (POST {url}/predict, GET {url}/health); Ctrl-C stops", flush=True)
    config = uvicorn.Config(app, log_level=cfg.log_level, access_log=cfg.access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[listener])
