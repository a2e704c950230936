"""serve.py's logic: a model, as predict.py takes it, behind an HTTP server (127.0.0.1 by default: this machine only).

FastAPI on uvicorn: maintained, widely used, and asynchronous, so that requests that arrive together are batched
here in a few lines (Batcher). TorchServe is in limited maintenance; LitServe, Lightning's server, is built on these
same two and batches by itself, but could not be installed and checked offline against this project's pinned torch
and lightning. They are the optional `serve` extra.

  GET  /health   {"status": "ok", the model file, its input and classes, the batches run so far}
  POST /predict  an image file as the body (any Content-Type but application/json and multipart/form-data; e.g.
                 image/png) -> one result, as predict.py writes it; or image files as a form (multipart/form-data,
                 `curl -F file=@digit.png`) -> one result, or {"predictions": [...]} for several files; or a JSON
                 array of pixel values (Content-Type: application/json), channels last, one image or a stack
                 (prediction.images_from_array) -> one result or {"predictions": [...]}

A request the server cannot answer gets a 4xx status and {"error": "<one line>"}: 400 for a body that is not an
image, has the wrong size or channels, is malformed JSON, a malformed form or an array of the wrong shape or values,
404/405 for another path or method, 408 for a request whose headers or body do not arrive within header_timeout_s
or body_timeout_s, 413 for a body over max_body_bytes, 431 for headers over max_header_bytes. Nothing a request sends
stops the server, and no client holds a connection for longer than these timeouts: uvicorn closes idle connections
(keep_alive_s) but waits for ever for a request's headers and leaves its body to the application, so GuardedProtocol
(uvicorn's h11 protocol, used whether or not httptools is installed) gives the headers a deadline, read_body the body.
"""

import asyncio
import email.parser
import email.policy
import importlib.util
import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..core.errors import UserError
from ..run.config_rules import BOOLEAN, NON_NEGATIVE, POSITIVE, WHOLE_0, WHOLE_1, Rule, one_of, shown
from .prediction import BadInput, Model, image_from_bytes, image_shapes, images_from_array, load_model

SERVE_EXTRA = 'pip install -e ".[serve]" (fastapi, uvicorn)'
SEND_A_FILE = 'curl --data-binary @digit.png -H "Content-Type: image/png" <url>/predict, or curl -F file=@digit.png'
# A connection closed while its client is still sending is reset, and the client may never read the answer (413,
# 431, 408): so the server half-closes instead, and reads and drops what still comes for at most this long.
LINGER_S = 3.0
BLANK_LINE = re.compile(b"\n\r?\n")  # the end of a request's headers, as h11 finds it
RULES = {
    "host": Rule(
        "an address to listen on, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
        lambda v: isinstance(v, str) and bool(v.strip()),
    ),
    "port": Rule("a port number from 0 (any free port) to 65535", lambda v: WHOLE_0.test(v) and v <= 65535),
    "max_body_bytes": WHOLE_1,
    "max_header_bytes": WHOLE_1,
    "header_timeout_s": POSITIVE,
    "body_timeout_s": POSITIVE,
    "keep_alive_s": POSITIVE,
    "max_batch_size": WHOLE_1,
    "max_wait_ms": NON_NEGATIVE,
    "log_level": one_of("critical", "error", "warning", "info", "debug", "trace"),
    "access_log": BOOLEAN,
}


def refusal_bytes(status: int, message: str) -> bytes:
    """A whole HTTP response {"error": message} that closes the connection, for the refusals the protocol answers
    itself (before any request reaches the application)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class LingeringTransport:
    """The connection's transport as the protocol (and uvicorn) sees it: close() while the client may still be
    sending half-closes the connection (the answer is sent in full, then end of file) and drops what the client
    still sends, for at most LINGER_S, instead of resetting it."""

    def __init__(self, transport: asyncio.Transport, client_may_be_sending: Any) -> None:
        self.transport, self.client_may_be_sending = transport, client_may_be_sending
        self.lingering = False
        self.timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's
        return getattr(self.transport, name)

    def write(self, data: bytes) -> None:
        if not self.lingering:
            self.transport.write(data)

    def is_closing(self) -> bool:
        return self.lingering or self.transport.is_closing()

    def close(self) -> None:
        if self.lingering or self.transport.is_closing() or not self.client_may_be_sending():
            self.close_now()
            return
        self.lingering = True
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after what is buffered: the client reads our answer, then end of file
        self.timer = asyncio.get_running_loop().call_later(LINGER_S, self.close_now)

    def close_now(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport.close()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int) -> type:
    """uvicorn's h11 protocol, with what it leaves out for a server in front of the public: a request's headers must
    arrive within header_timeout_s of the connection opening or of the previous answer (else 408, or a silent close
    for a connection that sent nothing), and may be at most max_header_bytes (else 431); refusals are JSON and the
    connection closes without resetting a client that is still sending (LingeringTransport)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.headers_timer: asyncio.TimerHandle | None = None
            self.refused = self.shutting_down = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(LingeringTransport(transport, self.client_may_be_sending))  # type: ignore[arg-type]
            self.time_the_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.headers_timer is not None:
                self.headers_timer.cancel()
            super().connection_lost(exc)
            self.transport.close_now()  # type: ignore[attr-defined]  # a lingering close ends with the connection

        def client_may_be_sending(self) -> bool:
            if self.shutting_down:
                return False
            state = self.conn.their_state
            return (
                self.refused
                or state in (h11.SEND_BODY, h11.ERROR)
                or (state is h11.IDLE and bool(self.conn.trailing_data[0]))
            )

        def time_the_headers(self) -> None:
            if self.headers_timer is not None:
                self.headers_timer.cancel()
            self.headers_timer = self.loop.call_later(header_timeout_s, self.headers_timed_out)

        def headers_timed_out(self) -> None:
            # Only while the connection waits for a request's headers: a request in progress has its own timeout.
            if self.transport.is_closing() or (self.conn.their_state, self.conn.our_state) != (h11.IDLE, h11.IDLE):
                return
            if self.conn.trailing_data[0]:
                self.refuse(408, f"the request's headers did not arrive within header_timeout_s={header_timeout_s} s")
            else:
                self.transport.close()  # a connection that sent nothing is closed without an answer

        def refuse(self, status: int, message: str) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                # A request is in progress (its body turned out malformed): the answer is this one, the application
                # sees a client that has gone.
                self.cycle.disconnected = True
                self.cycle.message_event.set()
                if self.cycle.response_started:
                    self.transport.close()
                    return
            self.refused = True
            self.transport.write(refusal_bytes(status, message))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return  # lingering: dropped
            if self.conn.their_state is h11.IDLE:  # headers: checked here, as h11 checks only unfinished ones
                pending = self.conn.trailing_data[0] + data
                end = BLANK_LINE.search(pending)
                if (end.end() if end else len(pending)) > max_header_bytes:
                    self.refuse(431, f"the request line and headers are over max_header_bytes={max_header_bytes} bytes")
                    return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:  # h11 found the request malformed
            self.refuse(400, "the request is not valid HTTP/1.1")

        def on_response_complete(self) -> None:
            body_unread = self.conn.their_state is h11.SEND_BODY  # answered before the body ended: 408, 413, ...
            if not body_unread:
                self.time_the_headers()  # before uvicorn starts on a pipelined request, whose headers are here
            super().on_response_complete()
            if body_unread:
                self.transport.close()  # rather than read on a body nobody will use: lingering, at most LINGER_S

        def shutdown(self) -> None:
            self.shutting_down = True
            if self.transport.is_closing():
                self.transport.close()
                return
            super().shutdown()

    return GuardedProtocol


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


class ClientGone(Exception):
    """The client closed its connection before its body ended: nobody is left to answer."""


async def read_body(request: Any, limit: int, timeout_s: float) -> bytes:
    """The request's body, refused once it is over `limit` bytes (413) or has not all arrived within `timeout_s`
    (408: a client that sends its headers, then its body slowly or not at all, holds no connection for ever)."""
    from starlette.requests import ClientDisconnect

    refusal = f"the body is over max_body_bytes={limit} bytes: send a smaller file (one image of the model's size)"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, refusal)

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a chunked body, whose size is not declared
                raise Refused(413, refusal)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise Refused(408, f"the body did not arrive within body_timeout_s={timeout_s} s") from None
    except ClientDisconnect:
        raise ClientGone() from None


def parse_form(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The files of a multipart/form-data body (`curl -F file=@digit.png`), as (file name, bytes), in order; parsed
    with the standard library's email parser (the format is MIME's), so that the serve extra needs no form parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if message.defects or not message.is_multipart():
        reasons = "; ".join(
            (type(defect).__doc__ or type(defect).__name__).strip().splitlines()[0] for defect in message.defects
        )
        raise Refused(400, f"the multipart/form-data body is malformed ({reasons or 'no parts'}): send {SEND_A_FILE}")
    files = [
        (
            part.get_filename() or part.get_param("name", "file", header="content-disposition"),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
        if part.get_filename() is not None
    ]
    if not files:
        raise Refused(400, f"the form holds no file, only fields: send {SEND_A_FILE}")
    return [(str(name), payload or b"") for name, payload in files]


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
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

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

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone) -> Response:
        return Response(status_code=400)  # never sent (the connection is closed), and nothing to log

    @app.exception_handler(StarletteHTTPException)
    async def not_here(request: Request, err: StarletteHTTPException) -> JSONResponse:  # 404, 405
        return JSONResponse(
            {"error": f"{err.detail}: {request.method} {request.url.path}; POST /predict an image, GET /health"},
            status_code=err.status_code,
            headers=err.headers,
        )

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
        body = await read_body(request, cfg.max_body_bytes, cfg.body_timeout_s)
        content_type = request.headers.get("content-type", "")
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == "application/json":
            try:
                array = parse_array(body)
                images, single = images_from_array(array, model), array.shape in image_shapes(model)
            except BadInput as err:
                raise Refused(400, f"the JSON array {err}") from None
        elif media_type == "multipart/form-data":
            images = []
            for name, data in parse_form(content_type, body):
                try:
                    images.append(image_from_bytes(data, model))
                except BadInput as err:
                    raise Refused(400, f"the file {name!r} {err}") from None
            single = len(images) == 1
        else:
            try:
                images, single = [image_from_bytes(body, model)], True
            except BadInput as err:
                hint = ""
                if media_type == "application/x-www-form-urlencoded":  # curl -d @file, which drops line breaks
                    hint = f" (curl -d @file drops the file's line breaks: send {SEND_A_FILE})"
                raise Refused(400, f"the body {err}{hint}") from None
        results = [model.result(str(index), row) for index, row in enumerate(await batcher.probabilities(images))]
        for result in results:
            del result["input"]
        return results[0] if single else {"predictions": results}

    return app


def serve(cfg: DictConfig) -> None:
    """Listen on cfg.host:cfg.port (port=0: a free one) and serve cfg.model_path until stopped: SIGTERM or Ctrl-C
    (uvicorn finishes the requests in progress, then raises the signal again: serve.py ends on it, as a server
    does)."""
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

    model = load_model(cfg.model_path, trust_archive=cfg.get("trust_archive", False))
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
    config = uvicorn.Config(
        app,
        http=guarded_protocol(cfg.header_timeout_s, cfg.max_header_bytes),
        h11_max_incomplete_event_size=cfg.max_header_bytes,
        timeout_keep_alive=cfg.keep_alive_s,
        log_level=cfg.log_level,
        access_log=cfg.access_log,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[listener])
