"""The web side of `longlive live`: one local page that plays the stream and steers it.

aiohttp serves three things (the page is plain HTML and JavaScript shipped in the package:
no build step):

    GET  /             the page (longlive/live_page/index.html)
    GET  /ws           a WebSocket the server writes to: JSON text messages (hello, status, role)
                       and one binary message per frame: a 4-byte big-endian header length, the
                       JSON header {frame, chunk, shot, request}, then the JPEG
    POST /api/control  JSON {"action": "prompt" | "pause" | "resume" | "stop", "prompt", "cut"}
                       from the driving tab, with its token in the X-Live-Token header

Frames travel as JPEG over the WebSocket rather than as fragmented MP4 or MJPEG: each frame
arrives with its chunk, shot and prompt request beside it (the page shows what is in force and
measures the prompt latency from it), the page draws with `createImageBitmap` (no codec or
Media Source quirks), and a slow viewer skips frames instead of stalling the stream.

One viewer drives (the first to connect; when it leaves, the longest-connected watcher takes
over); the others watch. The server never stops the generator for anything a page sends: bad
input gets a 4xx answer with a one-line message the page shows. Requests are refused when they
come from another origin (the Origin header must be this server's), when the Host header is not
this server's address (DNS rebinding; with a loopback bind), when they are not JSON, larger than
MAX_BODY_BYTES, or more than RATE_PER_S a second on average (bursts of RATE_BURST).

All state lives on the `LiveServer` object; the generator thread reaches it only through
`frames` / `status`, which hand off to the event loop (`call_soon_threadsafe`).
"""
from __future__ import annotations

import asyncio
import collections
import io
import ipaddress
import json
import logging
import os
import secrets
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

import attrs
from aiohttp import WSMsgType, web
from PIL import Image

from longlive.live_prompts import MAX_PROMPT_CHARS, PromptRejected

if TYPE_CHECKING:
    import numpy as np

    from longlive.live_session import FrameInfo, LiveSession

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024  # a control request; a prompt is at most MAX_PROMPT_CHARS characters
RATE_PER_S, RATE_BURST = 5.0, 10  # control requests per second (token bucket)
OUTBOX_FRAMES = 64  # frames queued for one viewer before its oldest are dropped
JPEG_QUALITY = 90


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def encode_jpeg(frame: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def frame_message(jpeg: bytes, info: FrameInfo) -> bytes:
    header = json.dumps(attrs.asdict(info)).encode("utf-8")
    return struct.pack(">I", len(header)) + header + jpeg


class Refused(Exception):
    """A request the server answers with `status` and a one-line message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.define(eq=False)
class Viewer:
    """One connected page: its socket, token and outbox of (kind, message) pairs, kind "frame",
    "status" or "note". Only the newest status waits; past OUTBOX_FRAMES waiting frames the oldest
    is dropped (a lagging viewer skips frames, nobody waits for it)."""

    id: int
    socket: web.WebSocketResponse
    token: str
    outbox: collections.deque = attrs.field(factory=collections.deque)
    wakeup: asyncio.Event = attrs.field(factory=asyncio.Event)
    frames_waiting: int = 0
    dropped: int = 0

    def send(self, kind: str, message: str | bytes) -> None:
        if kind == "status":
            self.outbox = collections.deque(item for item in self.outbox if item[0] != "status")
        self.outbox.append((kind, message))
        if kind == "frame":
            self.frames_waiting += 1
            if self.frames_waiting > OUTBOX_FRAMES:
                oldest = next(item for item in self.outbox if item[0] == "frame")
                self.outbox.remove(oldest)
                self.frames_waiting -= 1
                self.dropped += 1
        self.wakeup.set()

    def take(self) -> str | bytes:
        kind, message = self.outbox.popleft()
        self.frames_waiting -= kind == "frame"
        return message


class TokenBucket:
    """At most `rate` events a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class LiveServer:
    """Serves the page, fans frames and status out to viewers, and turns the driver's requests into
    session calls. It is the session's `LiveListener`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8000, linger_s: float = 2.0) -> None:
        self.host, self.port, self.linger_s = host, port, linger_s
        self.session: LiveSession | None = None
        self.viewers: dict[int, Viewer] = {}
        self.driver: int | None = None
        self._next_id = 0
        self._bucket = TokenBucket(RATE_PER_S, RATE_BURST)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pieces: asyncio.Queue | None = None
        self._status: dict = {}
        self._ended: asyncio.Event | None = None
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="longlive-live-jpeg")

    # ---- LiveListener: called on the generator thread ----

    def frames(self, frames: np.ndarray, infos: list[FrameInfo]) -> None:
        self._loop.call_soon_threadsafe(self._pieces.put_nowait, (frames, infos))

    def status(self, status: dict) -> None:
        self._loop.call_soon_threadsafe(self._on_status, status)

    # ---- serving ----

    def serve(self, session: LiveSession, on_ready: Callable[[str], None] = print) -> None:
        """Serve until the session has ended (and `linger_s` more, so pages get the last status)."""
        asyncio.run(self._serve(session, on_ready))

    async def _serve(self, session: LiveSession, on_ready: Callable[[str], None]) -> None:
        self.session = session
        self._loop = asyncio.get_running_loop()
        self._pieces, self._ended = asyncio.Queue(), asyncio.Event()
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C / kill: stop the stream, save, then exit
            self._loop.add_signal_handler(sig, self._signalled, sig)
        fanout = asyncio.create_task(self._fan_out())
        host = f"[{self.host}]" if ":" in self.host else self.host
        on_ready(f"http://{host}:{self.port}/")
        session.start()
        try:
            await self._ended.wait()
            await asyncio.get_running_loop().run_in_executor(None, session.join)
            await self._pieces.join()  # every frame reached the outboxes
            await asyncio.sleep(self.linger_s)
        finally:
            session.stop()  # a no-op after the normal end; after a server failure the stream ends and is saved
            fanout.cancel()
            for viewer in list(self.viewers.values()):
                await viewer.socket.close()
            await runner.cleanup()
            self._encoder.shutdown(wait=False)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._socket)
        app.router.add_post("/api/control", self._control)
        return app

    def _signalled(self, sig: int) -> None:
        log.warning("live: %s: stopping the stream and saving (again to quit at once)", signal.Signals(sig).name)
        if not self.session.stop():  # the second signal: quit now (the fragmented partial mp4 stays playable)
            os._exit(130)

    def _on_status(self, status: dict) -> None:
        self._status = status
        self._broadcast("status", json.dumps(status))
        if status["state"] in ("finished", "failed"):
            self._ended.set()

    async def _fan_out(self) -> None:
        """Encode each piece's frames (a worker thread) and queue them to every viewer."""
        loop = asyncio.get_running_loop()
        while True:
            frames, infos = await self._pieces.get()
            try:
                jpegs = await loop.run_in_executor(self._encoder, lambda f=frames: [encode_jpeg(x) for x in f])
                for jpeg, info in zip(jpegs, infos):
                    self._broadcast("frame", frame_message(jpeg, info))
            except Exception:  # a frame the page cannot get never stops the stream
                log.warning("live: could not send frames %d..%d", infos[0].frame, infos[-1].frame, exc_info=True)
            finally:
                self._pieces.task_done()

    def _broadcast(self, kind: str, message: str | bytes) -> None:
        for viewer in self.viewers.values():
            viewer.send(kind, message)

    # ---- handlers ----

    async def _page(self, request: web.Request) -> web.StreamResponse:
        reason = self._foreign_host(request)
        if reason:
            return web.Response(status=403, text=reason)
        page = resources.files("longlive").joinpath("live_page/index.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html",
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        reason = self._foreign_host(request) or self._foreign_origin(request)
        if reason:
            return web.Response(status=403, text=reason)
        socket = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_BODY_BYTES)
        await socket.prepare(request)
        self._next_id += 1
        viewer = Viewer(id=self._next_id, socket=socket, token=secrets.token_urlsafe(18))
        self.viewers[viewer.id] = viewer
        if self.driver is None:
            self.driver = viewer.id
        log.info("live: viewer %d connected (%s); %d watching", viewer.id,
                 "driving" if self.driver == viewer.id else "watching", len(self.viewers))
        viewer.send("note", json.dumps({"type": "hello", "role": self._role(viewer), "token": viewer.token,
                                "max_prompt_chars": MAX_PROMPT_CHARS, "viewer": viewer.id}))
        if self._status:
            viewer.send("status", json.dumps(self._status))
        sender = asyncio.create_task(self._send_loop(viewer))
        self.session.begin()
        try:
            async for message in socket:  # the page only listens; anything it sends gets an explanation
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    viewer.send("note", json.dumps({"type": "error", "message": "this socket only sends frames; "
                                            "controls go to POST /api/control"}))
        finally:
            sender.cancel()
            self._leave(viewer)
        return socket

    async def _send_loop(self, viewer: Viewer) -> None:
        socket = viewer.socket
        try:
            while not socket.closed:
                await viewer.wakeup.wait()
                viewer.wakeup.clear()
                while viewer.outbox and not socket.closed:
                    message = viewer.take()
                    if isinstance(message, bytes):
                        await socket.send_bytes(message)
                    else:
                        await socket.send_str(message)
        except (ConnectionError, RuntimeError):  # the tab went away mid-send: _socket's loop ends too
            pass

    def _leave(self, viewer: Viewer) -> None:
        self.viewers.pop(viewer.id, None)
        if self.driver == viewer.id:
            self.driver = min(self.viewers) if self.viewers else None  # the longest-connected watcher drives
            if self.driver is not None:
                promoted = self.viewers[self.driver]
                promoted.send("note", json.dumps({"type": "role", "role": "driver",
                                          "message": "the driving tab left: this tab drives now"}))
        log.info("live: viewer %d left (%d frames it could not keep up with were skipped); %d connected",
                 viewer.id, viewer.dropped, len(self.viewers))

    def _role(self, viewer: Viewer) -> str:
        return "driver" if self.driver == viewer.id else "watcher"

    async def _control(self, request: web.Request) -> web.Response:
        try:
            answer = await self._handle_control(request)
            return web.json_response({"ok": True, **answer})
        except Refused as e:
            return web.json_response({"ok": False, "error": str(e)}, status=e.status)

    async def _handle_control(self, request: web.Request) -> dict:
        reason = self._foreign_host(request) or self._foreign_origin(request)
        if reason:
            raise Refused(403, reason)
        if request.content_type != "application/json":
            raise Refused(415, "send controls as JSON (Content-Type: application/json)")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise Refused(413, f"the request has {request.content_length} bytes, more than {MAX_BODY_BYTES}; "
                               f"a prompt is at most {MAX_PROMPT_CHARS} characters")
        body = await request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise Refused(413, f"the request is larger than {MAX_BODY_BYTES} bytes; "
                               f"a prompt is at most {MAX_PROMPT_CHARS} characters")
        viewer = next((v for v in self.viewers.values() if v.token == request.headers.get("X-Live-Token")), None)
        if viewer is None:
            raise Refused(403, "this page is not connected to the stream (or the server restarted); reload it")
        if viewer.id != self.driver:
            raise Refused(403, "this tab is watching: the driving tab steers (this one drives when that one closes)")
        if not self._bucket.take():
            raise Refused(429, f"too many requests (more than {RATE_PER_S:g} a second); wait a moment: the newest "
                               "prompt takes effect at the next chunk anyway")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "the request is not JSON text") from None
        if not isinstance(data, dict):
            raise Refused(400, "the request must be a JSON object with an \"action\"")
        return self._act(data)

    def _act(self, data: dict[str, Any]) -> dict:
        session, action = self.session, data.get("action")
        if session.ended:
            raise Refused(409, "the stream has ended; start `longlive live` again for a new one")
        if action == "prompt":
            try:
                request, replaced = session.submit(data.get("prompt"), cut=data.get("cut") is True)
            except PromptRejected as e:
                raise Refused(400, str(e)) from None
            kind = "new shot" if request.cut else "prompt"
            message = f"{kind} #{request.id} queued: it takes effect at the next chunk"
            if replaced is not None:
                message += f" (it replaces #{replaced.id}, which had not started yet)"
            return {"message": message, "request": request.id}
        if action in ("pause", "resume", "stop"):
            done = getattr(session, action)()
            state = session.status()["state"]
            messages = {"pause": "paused after this chunk", "resume": "resumed",
                        "stop": "stopping after this chunk: the video and prompts will be saved"}
            return {"message": messages[action] if done else f"nothing to {action}: the stream is {state}"}
        raise Refused(400, f"unknown action {action!r}; use prompt, pause, resume or stop")

    def _foreign_host(self, request: web.Request) -> str | None:
        """With a loopback bind, the Host header must name this server (a DNS-rebinding page cannot)."""
        if not is_loopback(self.host):
            return None
        host = request.headers.get("Host", "")
        allowed = {f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]", self.host)}
        return None if host in allowed else f"refused: Host {host!r} is not this server ({sorted(allowed)[0]})"

    def _foreign_origin(self, request: web.Request) -> str | None:
        """A browser names the page's origin; only this server's own page may control or watch."""
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser page (curl, a script on this machine)
            return None
        if origin != f"http://{request.headers.get('Host', '')}":
            return f"refused: cross-origin request from {origin!r}; open the page this server serves"
        return None
