"""hypothesis over the Socket.IO and plain-WebSocket events (see fuzzing.py): the event table
``transports/events.py`` EVENTS, the contract docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rawclients import RawSocketIO
from target import INTERNAL, Figures, FuzzTarget, LoopThread

from jiomosa.core.types import KEYS
from jiomosa.transports.events import EVENTS

ROUND_TRIP = 60.0  # seconds a ping may take to come back: twice the browser's command timeout
EVENT_NAMES = list(EVENTS)  # the one event table of both push transports
KEY_NAMES = list(KEYS)


# ----------------------------------------------------------------------------- events
def _json_values() -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40),
                     st.floats(allow_nan=True, allow_infinity=True))
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12)


def _numbers() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(-2000, 4000), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([0, 1, 239, 240, 719, 720, 1279, 1280, -1, 10, 90, 60,
                                      1e308, -0.0]),
                     st.text(max_size=5), st.none(), st.booleans())


def payloads(sessions: list[str], tokens: list[str]) -> st.SearchStrategy[Any]:
    """Event payloads: objects with the contract's fields (docs/protocol.md) holding good,
    boundary and wrong values, and any JSON at all."""
    session_ref = st.one_of(st.sampled_from(sessions) if sessions else st.nothing(),
                            st.text(max_size=140), st.integers(), st.none())
    share_ref = st.one_of(st.sampled_from(tokens) if tokens else st.nothing(),
                          st.text(max_size=130))
    fields: dict[str, st.SearchStrategy[Any]] = {
        "session_id": session_ref, "share": share_ref, "x": _numbers(), "y": _numbers(),
        "deltaX": _numbers(), "deltaY": _numbers(),
        "key": st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=20), _numbers(),
                         st.sampled_from(["F5", "Control", "Meta", "Alt+F4"])),
        "text": st.one_of(st.text(max_size=300), st.text(max_size=5000), _numbers()),
        "quality": _numbers(), "fps": _numbers(),
        "enabled": st.one_of(st.booleans(), _numbers()),
        "encoding": st.one_of(st.sampled_from(["binary", "base64"]), st.text(max_size=10)),
    }
    structured = st.fixed_dictionaries({}, optional=fields)  # type: ignore[arg-type]
    return st.one_of(structured, structured, structured, _json_values())


def valid_events(sessions: list[str]) -> st.SearchStrategy[tuple[str, Any]]:
    """Events as the contract has them, with values in range: they reach the sessions (a
    subscription, Chrome's input dispatch), where random payloads mostly stop at validation."""
    point = st.fixed_dictionaries({"x": st.integers(0, 1279), "y": st.integers(0, 719)})
    return st.one_of(
        st.tuples(st.just("subscribe"), st.fixed_dictionaries(
            {"session_id": st.sampled_from(sessions)},
            optional={"fps": st.integers(1, 60), "quality": st.integers(10, 90),
                      "encoding": st.sampled_from(["binary", "base64"])})),
        st.tuples(st.just("input:click"), point),
        st.tuples(st.just("input:scroll"), st.fixed_dictionaries(
            {"deltaX": st.integers(-500, 500), "deltaY": st.integers(-500, 500)},
            optional={"x": st.integers(0, 1279), "y": st.integers(0, 719)})),
        st.tuples(st.just("input:key"), st.fixed_dictionaries({"key": st.sampled_from(
            KEY_NAMES)})),
        st.tuples(st.just("input:text"), st.fixed_dictionaries({"text": st.text(
            max_size=60)})),
        st.tuples(st.just("quality:set"), st.fixed_dictionaries({"quality": st.integers(
            10, 90)})),
        st.tuples(st.just("fps:set"), st.fixed_dictionaries({"fps": st.integers(1, 60)})),
        st.tuples(st.just("adaptive:toggle"),
                  st.fixed_dictionaries({"enabled": st.booleans()})),
        st.tuples(st.just("unsubscribe"), st.none()),
        st.tuples(st.just("ping"), st.one_of(st.integers(), st.text(max_size=64))))


def event_names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(EVENT_NAMES), st.sampled_from(EVENT_NAMES),
                     st.sampled_from(EVENT_NAMES), st.text(max_size=70))


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@dataclass
class Message:
    """One generated client message and the transport it goes over."""

    transport: str  # "socketio" or "websocket"
    wire: str | bytes  # exactly what is sent
    session: str = ""  # the plain WebSocket's session


def messages(target: FuzzTarget) -> st.SearchStrategy[Message]:
    sessions, tokens = target.witnesses, target.tokens
    event = st.one_of(st.tuples(event_names(), payloads(sessions, tokens)),
                      valid_events(sessions))
    extra = st.lists(_json_values(), max_size=2)

    def sio(name: str, data: Any, ack: int | None, more: list[Any]) -> Message:
        body = json.dumps([name, data, *more], allow_nan=True)
        return Message("socketio", "42" + ("" if ack is None else str(ack)) + body)

    sio_good = st.builds(lambda e, ack, more: sio(e[0], e[1], ack, more), event,
                         st.one_of(st.none(), st.integers(0, 10**6)), extra)
    sio_junk = st.builds(lambda w: Message("socketio", w), st.one_of(
        st.text(max_size=200), st.binary(max_size=200),
        st.builds(lambda p, t: p + t, st.sampled_from(["4", "42", "43", "40", "41", "45",
                                                       "451-", "2", "3", "6"]),
                  st.text(max_size=100)),
        st.builds(lambda n: "42" + deep(n), st.integers(500, 20_000)),
        st.builds(lambda n: "4" + deep(n), st.integers(500, 20_000))))

    def ws(name: Any, data: Any, msg_id: Any, session: str) -> Message:
        envelope = {"event": name, "data": data}
        if msg_id is not None:
            envelope["id"] = msg_id
        return Message("websocket", json.dumps(envelope, allow_nan=True), session)

    ws_good = st.builds(lambda e, msg_id, s: ws(e[0], e[1], msg_id, s), event,
                        st.one_of(st.none(), st.integers(), st.text(max_size=80),
                                  _json_values()),
                        st.sampled_from(sessions))
    ws_junk = st.builds(lambda w, s: Message("websocket", w, s), st.one_of(
        st.text(max_size=200), st.binary(max_size=200), _json_values().map(json.dumps),
        st.builds(lambda n: '{"event":"ping","data":' + deep(n) + "}",
                  st.integers(500, 20_000))), st.sampled_from(sessions))
    return st.one_of(sio_good, sio_good, sio_good, sio_junk, ws_good, ws_good, ws_good,
                     ws_junk)


class EventClients:
    """One Socket.IO and one plain-WebSocket connection per witness, reopened when the
    streamer closes them (it does, on purpose, for undecodable messages); every message they
    receive is read and counted."""

    BARRIER_EVERY = 16  # messages between two round trips: keeps few events in flight

    def __init__(self, target: FuzzTarget, figures: Figures) -> None:
        self.target = target
        self.figures = figures
        self.http: aiohttp.ClientSession | None = None
        self.sio: RawSocketIO | None = None
        self.sio_reader: asyncio.Task[None] | None = None
        self.ws: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.ws_readers: dict[str, asyncio.Task[None]] = {}
        self.acks: dict[int, asyncio.Future[None]] = {}
        self.pongs: dict[str, asyncio.Future[None]] = {}
        self.recent: list[str] = []
        self.sent = 0
        self.next_ack = 10**7

    async def open(self) -> None:
        self.http = aiohttp.ClientSession(trust_env=False)

    async def close(self) -> None:
        if self.sio is not None:
            await self.sio.close()
        for ws in self.ws.values():
            try:
                await asyncio.wait_for(ws.close(), 3)
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
        for task in [self.sio_reader, *self.ws_readers.values()]:
            if task is not None:
                task.cancel()
        if self.http is not None:
            await self.http.close()

    # --------------------------------------------------------------- answers
    def _note(self, event: str, data: Any) -> None:
        self.figures.events[event] += 1
        if event == "error" and isinstance(data, dict) and data.get("message") == INTERNAL:
            self.figures.server_errors.append(
                f"internal error event after: {self.recent[-5:]}")

    async def _read_sio(self, client: RawSocketIO) -> None:
        assert client.ws is not None
        while True:
            msg = await client.ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            text = msg.data
            if text == "2":
                await client.ws.send_str("3")
            elif text.startswith("42"):
                body = json.loads(text[2:])
                self._note(str(body[0]), body[1] if len(body) > 1 else None)
            elif text.startswith("451-"):
                self.figures.events["frame"] += 1
            elif text.startswith("43"):
                digits = ""
                for ch in text[2:]:
                    if not ch.isdigit():
                        break
                    digits += ch
                waiter = self.acks.pop(int(digits), None) if digits else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def _read_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.figures.events["frame"] += 1
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            envelope = json.loads(msg.data)
            self._note(str(envelope.get("event")), envelope.get("data"))
            waiter = self.pongs.pop(str(envelope.get("id")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # --------------------------------------------------------------- connections
    async def _socketio(self) -> RawSocketIO:
        if self.sio is None or self.sio.ws is None or self.sio.ws.closed or (
                self.sio_reader is not None and self.sio_reader.done()):
            if self.sio is not None:
                self.figures.reconnects += 1
                await self.sio.close()
            assert self.http is not None
            self.sio = await RawSocketIO(self.http, self.target.base).connect()
            self.sio_reader = asyncio.create_task(self._read_sio(self.sio))
        return self.sio

    async def _websocket(self, session: str) -> aiohttp.ClientWebSocketResponse:
        ws, reader = self.ws.get(session), self.ws_readers.get(session)
        if ws is None or ws.closed or reader is None or reader.done():
            if ws is not None:
                self.figures.reconnects += 1
                try:
                    await asyncio.wait_for(ws.close(), 3)
                except (TimeoutError, aiohttp.ClientError, ConnectionError):
                    pass
            assert self.http is not None
            url = f"{self.target.base.replace('http', 'ws', 1)}/api/session/{session}/stream"
            ws = await self.http.ws_connect(url, max_msg_size=0)
            self.ws[session] = ws
            self.ws_readers[session] = asyncio.create_task(self._read_ws(ws))
        return ws

    # --------------------------------------------------------------- sending
    async def send(self, message: Message) -> None:
        self.recent.append(repr(message.wire[:200]))
        del self.recent[:-20]
        try:
            if message.transport == "socketio":
                client = await self._socketio()
                await client.send(message.wire)
                if isinstance(message.wire, str) and message.wire[:2] in ("40", "41"):
                    # The client left the namespace (or asked again): its events and pings
                    # go nowhere now, as the protocol says; start over on a new connection.
                    await client.close()
            else:
                ws = await self._websocket(message.session)
                if isinstance(message.wire, bytes):
                    await ws.send_bytes(message.wire)
                else:
                    await ws.send_str(message.wire)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass  # closed by the streamer meanwhile: reopened for the next message
        self.figures.messages += 1
        self.sent += 1
        if self.sent % self.BARRIER_EVERY == 0:
            await self.barrier()

    async def barrier(self) -> None:
        """A round trip on every open connection: the streamer caught up with us (or closed
        the connection, which ends its reader)."""
        waits: list[Any] = []
        loop = asyncio.get_running_loop()
        try:
            client = await self._socketio()
            self.next_ack += 1
            waiter: asyncio.Future[None] = loop.create_future()
            self.acks[self.next_ack] = waiter
            await client.emit("ping", "barrier", ack=self.next_ack)
            waits.append(self._answer_or_end(waiter, self.sio_reader, "socket.io ping"))
            for session, ws in list(self.ws.items()):
                if ws.closed:
                    continue
                key = f"barrier-{self.next_ack}-{session[:6]}"
                pong: asyncio.Future[None] = loop.create_future()
                self.pongs[key] = pong
                await ws.send_str(json.dumps({"event": "ping", "id": key}))
                waits.append(self._answer_or_end(pong, self.ws_readers.get(session),
                                                 f"websocket ping ({session[:6]}…)"))
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass
        # Longer than the browser's own answer time (CDP commands time out after 30 s): an
        # event still unanswered after it is a hang.
        missing = [name for name in await asyncio.gather(*waits) if name]
        if missing:
            self.figures.unanswered.append(
                f"{', '.join(missing)}: no answer within {ROUND_TRIP} s after {self.recent[-3:]}")

    @staticmethod
    async def _answer_or_end(answer: asyncio.Future[None], reader: asyncio.Task[None] | None,
                             name: str) -> str:
        """"" if the round trip came back (or the connection ended), else ``name``."""
        waits: set[asyncio.Future[Any]] = {answer}
        if reader is not None:
            waits.add(reader)
        done, _ = await asyncio.wait(waits, timeout=ROUND_TRIP,
                                     return_when=asyncio.FIRST_COMPLETED)
        return "" if done else name


class EventFuzzer:
    """hypothesis over the events of both push transports."""

    def __init__(self, target: FuzzTarget, figures: Figures) -> None:
        self.target = target
        self.figures = figures
        self.loop = LoopThread()
        self.clients = EventClients(target, figures)
        self.loop.run(self.clients.open())

    def run(self, messages_wanted: int, log: Callable[[str], None] = print) -> None:
        start = time.monotonic()
        goal = self.figures.messages + messages_wanted
        strategy = messages(self.target)
        while self.figures.messages < goal:
            chunk = min(2000, goal - self.figures.messages)

            @settings(max_examples=chunk, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate])
            @given(message=strategy)
            def run(message: Message) -> None:
                self.loop.run(self.clients.send(message))

            before = self.figures.messages
            run()
            log(f"events: {self.figures.messages} messages, "
                f"{sum(self.figures.events.values())} received, "
                f"{self.figures.reconnects} reconnects")
            if self.figures.messages == before:
                break
        self.loop.run(self.clients.barrier())
        self.figures.event_seconds += time.monotonic() - start

    def close(self) -> None:
        self.loop.run(self.clients.close())
        self.loop.stop()


