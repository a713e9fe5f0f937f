"""The event loop of an asgi worker, on its own Python thread.

The worker's Rust side does the sockets, HTTP parsing and framing; this module runs the app: one asyncio
task per request, the lifespan protocol, and the await stack of a task for the log. Everything from the
rest of the worker arrives through ``bridge`` (``ferricorn._core`` ``LoopBridge``): an eventfd the loop
watches, whose ``drain()`` hands over new requests and timer events.
"""

import asyncio
import linecache

# The loop's heartbeat, read by the worker's watchdog (--asgi-block-threshold): at most this long apart
# while the loop is free.
BEAT = 0.1


def new_loop(kind):
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError(
                    "--asgi-loop uvloop: uvloop is not installed (pip install uvloop)"
                ) from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def task_stack(task, limit=64):
    """The await chain of a suspended task, most recent call first, one frame per two lines as a
    traceback shows them, ending with what the innermost coroutine awaits."""
    frames = []
    awaited = None
    obj = task.get_coro()
    seen = 0
    while obj is not None and seen < limit:
        seen += 1
        frame = (
            getattr(obj, "cr_frame", None)
            or getattr(obj, "gi_frame", None)
            or getattr(obj, "ag_frame", None)
        )
        if frame is not None:
            frames.append(frame)
        nxt = (
            getattr(obj, "cr_await", None)
            or getattr(obj, "gi_yieldfrom", None)
            or getattr(obj, "ag_await", None)
        )
        if nxt is None:
            break
        if not any(hasattr(nxt, a) for a in ("cr_frame", "gi_frame", "ag_frame")):
            awaited = nxt
            break
        obj = nxt
    lines = []
    if awaited is not None:
        lines.append("  awaiting %s\n" % _short_repr(awaited))
    for frame in reversed(frames):
        code = frame.f_code
        lineno = frame.f_lineno
        lines.append('  File "%s", line %s, in %s\n' % (code.co_filename, lineno, code.co_name))
        src = linecache.getline(code.co_filename, lineno).strip()
        if src:
            lines.append("    %s\n" % src)
    if not frames:
        lines.append("  (the task has no coroutine frame: it is not suspended in Python code)\n")
    return "".join(lines)


def _short_repr(obj):
    try:
        text = repr(obj)
    except Exception:
        text = object.__repr__(obj)
    return text if len(text) <= 300 else text[:297] + "..."


class Lifespan:
    """The lifespan protocol: startup before the worker accepts, shutdown when it stops."""

    def __init__(self, app, mode, bridge, loop):
        self.app = app
        self.mode = mode
        self.bridge = bridge
        self.loop = loop
        self.state = {}
        self.queue = asyncio.Queue()
        self.startup_done = loop.create_future()
        self.shutdown_done = loop.create_future()
        self.task = None
        self.unsupported = False

    def _settle(self, fut, value):
        if not fut.done():
            fut.set_result(value)

    async def _run(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if not self.startup_done.done() and self.mode == "auto":
                # An app without lifespan support raises on the scope type it does not know.
                self.unsupported = True
                self.bridge.log("info", "ASGI 'lifespan' protocol appears unsupported.")
                self._settle(self.startup_done, None)
            else:
                import traceback

                self.bridge.log(
                    "error",
                    "Exception in 'lifespan' protocol",
                    "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                )
                self._settle(self.startup_done, "Exception in 'lifespan' protocol")
            self._settle(self.shutdown_done, None)
        else:
            # The app returned: it has nothing (more) to say for startup or shutdown.
            self._settle(self.startup_done, None)
            self._settle(self.shutdown_done, None)

    async def _receive(self):
        return await self.queue.get()

    async def _send(self, message):
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self._settle(self.startup_done, None)
        elif kind == "lifespan.startup.failed":
            msg = message.get("message") or ""
            self.bridge.log("error", "Application startup failed. %s" % msg)
            self._settle(self.startup_done, "Application startup failed. %s" % msg)
        elif kind == "lifespan.shutdown.complete":
            self._settle(self.shutdown_done, None)
        elif kind == "lifespan.shutdown.failed":
            msg = message.get("message") or ""
            self.bridge.log("error", "Application shutdown failed. %s" % msg)
            self._settle(self.shutdown_done, None)
        else:
            raise RuntimeError("Unexpected ASGI message '%s' sent to a lifespan scope" % kind)

    async def startup(self):
        """None when the app started (or has no lifespan), else the reason it failed."""
        self.task = self.loop.create_task(self._run())
        self.queue.put_nowait({"type": "lifespan.startup"})
        error = await self.startup_done
        if error is None and not self.unsupported:
            self.bridge.log("info", "Application startup complete.")
        return error

    async def shutdown(self):
        if self.unsupported or self.task is None or self.task.done():
            return
        self.bridge.log("info", "Waiting for application shutdown.")
        self.queue.put_nowait({"type": "lifespan.shutdown"})
        await self.shutdown_done
        self.bridge.log("info", "Application shutdown complete.")


class Server:
    """One loop: its requests as tasks, fed by the bridge."""

    def __init__(self, bridge, app, loop, root_path):
        self.bridge = bridge
        self.app = app
        self.loop = loop
        self.root_path = root_path
        self.tasks = {}
        self.state = None
        self.stopping = loop.create_future()
        bridge.bind_loop(loop)

    def beat(self):
        self.bridge.tick()
        if not self.stopping.done():
            self.loop.call_later(BEAT, self.beat)

    def on_wake(self):
        for item in self.bridge.drain():
            if type(item) is tuple:
                self.on_event(*item)
            elif item == "stop":
                if not self.stopping.done():
                    self.stopping.set_result(None)
            elif item == "stacks":
                self.bridge.stacks([(req, task_stack(task)) for task, req in self.tasks.values()])
            else:
                self.start(item)

    def start(self, req):
        task = self.loop.create_task(self.run(req))
        self.tasks[req.id] = (task, req)

    def on_event(self, rid, kind, elapsed):
        entry = self.tasks.get(rid)
        if entry is None:
            return
        task, req = entry
        if kind == "gone":
            # The client left mid-request: a task that still runs after the grace period is cancelled.
            if elapsed <= 0:
                self.cancel_gone(rid, task, elapsed)
            else:
                self.loop.call_later(elapsed, self.cancel_gone, rid, task, elapsed)
            return
        stack = task_stack(task)
        if kind == "timeout":
            req.timed_out(elapsed, stack)
            task.cancel()
        else:
            req.slow(elapsed, stack)

    def cancel_gone(self, rid, task, grace):
        entry = self.tasks.get(rid)
        if entry is None or entry[0] is not task or task.done():
            return
        entry[1].client_left(grace)
        task.cancel()

    async def run(self, req):
        # `req.receive` and `req.send` answer with a ready-made awaitable when nothing has to wait,
        # else with a future of this loop (see `AsgiRequest.receive` / `.send`).
        try:
            await self.app(req.scope(self.root_path, self.state), req.receive, req.send)
        except asyncio.CancelledError:
            req.finish(None, True)
        except BaseException as exc:
            req.finish(exc)
        else:
            req.finish()
        finally:
            self.tasks.pop(req.id, None)

    async def main(self, lifespan_mode):
        lifespan = None
        if lifespan_mode != "off":
            lifespan = Lifespan(self.app, lifespan_mode, self.bridge, self.loop)
            error = await lifespan.startup()
            if error is not None:
                self.bridge.started(error)
                return
            self.state = lifespan.state
            self.bridge.started(None, self.state)
        else:
            self.state = self.bridge.state
            self.bridge.started(None)
        self.loop.add_reader(self.bridge.fd, self.on_wake)
        self.beat()
        # Requests queued before the loop watched its wake-ups.
        self.on_wake()
        await self.stopping
        self.loop.remove_reader(self.bridge.fd)
        # The worker's connections are done (or its graceful timeout passed): what still runs is cut off.
        for task, _ in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*(t for t, _ in self.tasks.values()), return_exceptions=True)
        if lifespan is not None:
            await lifespan.shutdown()


def serve(bridge, app, loop_kind, lifespan_mode, root_path=""):
    loop = new_loop(loop_kind)
    asyncio.set_event_loop(loop)
    server = Server(bridge, app, loop, root_path)
    try:
        loop.run_until_complete(server.main(lifespan_mode))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            pass
        loop.close()


__all__ = ["serve", "task_stack"]
