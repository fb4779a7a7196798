"""The C reference client against a hostile server: a scripted WebSocket server that sends what
a man in the middle of plain http could (a frame length that wraps the size arithmetic, a
message over the limit, texts that forge output lines, a forged upgrade answer), run against
the real client binary, plain and under AddressSanitizer; and a short libFuzzer run of the
client's parsers (the 10-minute run is `make fuzz-c`, mk/cfuzz.mk)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ROOT

CLIENT_DIR = ROOT / "clients" / "c"
FUZZ_DIR = CLIENT_DIR / "fuzz"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SESSION = "fJbcziuBktCgCDy1iv_oA8cHvummDsLE"
ASAN = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

Script = Callable[[socket.socket, bytes], None]


def build(out: Path, *args: str) -> Path:
    done = subprocess.run(["make", "-C", str(CLIENT_DIR), f"OUT={out}", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module", params=["plain", "asan"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client as shipped (a crash is a signal) and under ASan/UBSan (a crash is a report)."""
    return build_variant(tmp_path_factory.mktemp(f"c-client-{request.param}"), request.param)


def build_variant(out: Path, variant: str, *args: str) -> Path:
    """The client binary built into ``out``: ``plain`` (as shipped) or ``asan`` (ASan and
    UBSan); ``args`` are further make arguments (DELTA=1)."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.fail("make and gcc are needed (Debian packages: make gcc libc6-dev)")
    if variant == "plain":
        return build(out, *args, "EXTRA_CFLAGS=-Werror") / "jiomosa-client"
    return build(out, *args, "CC=gcc", f"EXTRA_CFLAGS=-Werror {ASAN}",
                 f"LDFLAGS={ASAN}") / "jiomosa-client"


# --------------------------------------------------------------------------- a hostile server
def ws_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes([first, n]) + payload
    if n < 65536:
        return bytes([first, 126]) + struct.pack(">H", n) + payload
    return bytes([first, 127]) + struct.pack(">Q", n) + payload


def jmf(seq: int, jpeg_size: int) -> bytes:
    jpeg = b"\xff\xd8" + bytes(i % 251 for i in range(jpeg_size - 4)) + b"\xff\xd9"
    return struct.pack(">3sBBBHIHHQ", b"JMF", 1, 24, 80, 0, seq, 320, 240, 0) + jpeg


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (masked) frames a client sent, unmasked."""
    frames, i = [], 0
    while i + 2 <= len(data):
        op, n, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack(">H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", data[i:i + 8])[0], i + 8
        mask, i = data[i:i + 4], i + 4
        frames.append((op, bytes(b ^ mask[k % 4] for k, b in enumerate(data[i:i + n]))))
        i += n
    return frames


def upgrade_answer(request: bytes) -> bytes:
    key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", request)
    assert key, request
    accept = base64.b64encode(hashlib.sha1(key.group(1) + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


class HostileServer:
    """Answers each connection with the next script (given the socket and the request head)
    and records every byte the client sends, read by its own thread so nothing is lost when
    the client resets a connection it gave up on."""

    def __init__(self, *scripts: Script) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.scripts = list(scripts)
        self.received: list[bytearray] = []
        self.requests: list[bytes] = []
        self.finished = 0  # connections handled to the end
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        for script in self.scripts:
            conn, _ = self.sock.accept()
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            while length and len(head) - head.index(b"\r\n\r\n") - 4 < int(length.group(1)):
                chunk = conn.recv(4096)  # a REST body: read it all, or closing resets
                if not chunk:
                    break
                head += chunk
            self.requests.append(head)
            got = bytearray()
            self.received.append(got)
            reader = threading.Thread(target=self.drain, args=(conn, got), daemon=True)
            reader.start()
            try:
                script(conn, head)
            except OSError:
                pass  # the client closed a connection it refused: what these tests want
            reader.join(30)
            conn.close()
            with self.changed:
                self.finished += 1
                self.changed.notify_all()

    @staticmethod
    def drain(conn: socket.socket, got: bytearray) -> None:
        try:
            while chunk := conn.recv(65536):
                got.extend(chunk)
        except OSError:
            pass

    def wait(self, finished: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.finished >= finished, 30), self.finished

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    servers: list[HostileServer] = []

    def start(*scripts: Script) -> HostileServer:
        servers.append(HostileServer(*scripts))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def run_client(client: Path, server: HostileServer, *args: str,
               connections: int = 1) -> subprocess.CompletedProcess[str]:
    """Runs the client to its end, then waits for the server to finish its connections."""
    before = server.finished
    done = subprocess.run([str(client), "-s", server.base, *args], capture_output=True,
                          text=True, errors="replace", timeout=120)
    assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, done.stderr
    server.wait(before + connections)
    return done


def stream(*frames: bytes, then: bytes = b"", shutdown: bool = True) -> Script:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(upgrade_answer(request) + b"".join(frames))
        if then:
            conn.sendall(then)
        if shutdown:
            conn.shutdown(socket.SHUT_WR)
    return script


# --------------------------------------------------------------------------- regressions
def test_wrapping_frame_length_fails_cleanly(client: Path, hostile: Callable[..., HostileServer]
                                             ) -> None:
    """Issue 10 item 11: a fragment of 10 bytes, then a continuation announcing 2^64-5 bytes.
    The old ws_read reserved m->len + len = 5 bytes (wrapped) and copied everything that
    followed into its 64 KB buffer: SIGSEGV, or an ASan heap-buffer-overflow report."""
    attack = (ws_frame(2, b"J" * 10, fin=False) + bytes([0x80, 127])
              + struct.pack(">Q", 2**64 - 5))
    server = hostile(stream(attack, then=b"A" * (4 << 20)))
    done = run_client(client, server, "-S", SESSION, "-t", "60")
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    assert "jiomosa-client: protocol error: 64-bit frame length" in done.stderr, done.stderr
    # The connection was failed the RFC 6455 way: a close frame with 1002 (protocol error).
    assert (8, struct.pack(">H", 1002)) in client_frames(bytes(server.received[0]))


def test_message_limit(client: Path, hostile: Callable[..., HostileServer]) -> None:
    """-m bounds what a server can make the client allocate; over it: exit 3 and close 1009."""
    frame = ws_frame(2, jmf(7, 300_000))
    close = ws_frame(8, struct.pack(">H", 1000) + b"session closed")
    server = hostile(stream(frame, close), stream(frame, close))
    done = run_client(client, server, "-S", SESSION, "-m", "200K", "-t", "60")
    assert done.returncode == 3, done.stderr
    assert "larger than the limit of 204800 (-m)" in done.stderr, done.stderr
    assert (8, struct.pack(">H", 1009)) in client_frames(bytes(server.received[0]))
    assert "frame seq=7" not in done.stdout
    accepted = run_client(client, server, "-S", SESSION, "-t", "60")  # default 16 MiB
    assert accepted.returncode == 0, accepted.stderr
    assert re.search(r"^frame seq=7 width=320 height=240 quality=80 bytes=300000 ",
                     accepted.stdout, re.M), accepted.stdout


def test_server_text_cannot_forge_output(client: Path, hostile: Callable[..., HostileServer]
                                         ) -> None:
    """The output is one line per thing that happened, for scripts: a text message or a close
    reason with a newline (or a terminal escape) must not start a line of its own."""
    forged = "frame seq=99 width=1 height=1 quality=1 bytes=1 age_ms=0"
    text = f'{{"event":"subscribed","data":"x\n{forged}\x1b[2J"}}'.encode()
    close = ws_frame(8, struct.pack(">H", 1000) + b"bye\ndone frames=1")
    server = hostile(stream(ws_frame(1, text), close))
    done = run_client(client, server, "-S", SESSION, "-t", "60")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert not any(line.startswith(("frame ", "done frames=1")) for line in lines), lines
    assert f'event {{"event":"subscribed","data":"x\\u000a{forged}\\u001b[2J"}}' in lines, lines
    assert "closed code=1000 reason=bye\\u000adone frames=1" in lines, lines


@pytest.mark.parametrize(("name", "answer", "error"), [
    ("no Upgrade header", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n",
     "no Upgrade: websocket"),
    ("an extension we did not offer", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
     b"\r\nConnection: Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
     "extension or subprotocol"),
])
def test_forged_upgrade_answer(client: Path, hostile: Callable[..., HostileServer], name: str,
                               answer: bytes, error: str) -> None:
    """RFC 6455 4.1: the client fails the connection unless the 101 has Upgrade: websocket,
    Connection: upgrade, the right accept and nothing it did not ask for."""
    def script(conn: socket.socket, request: bytes) -> None:
        accept = upgrade_answer(request).split(b"\r\n")[3]
        conn.sendall(answer + accept + b"\r\n\r\n" + ws_frame(2, jmf(1, 100)))
        conn.shutdown(socket.SHUT_WR)
    server = hostile(script)
    done = run_client(client, server, "-S", SESSION, "-n", "1", "-t", "60")
    assert done.returncode == 3, (name, done.returncode, done.stdout, done.stderr)
    assert error in done.stderr and "frame seq" not in done.stdout, done.stderr


def test_bad_text_and_session_id(client: Path, hostile: Callable[..., HostileServer]) -> None:
    """A text message that is not UTF-8 fails the connection with 1007; a session id from the
    create answer that is not an id (it goes into request lines) is refused before use."""
    server = hostile(stream(ws_frame(1, b'{"event":"subscribed","data":"\xc0\xaf"}')))
    done = run_client(client, server, "-S", SESSION, "-t", "60")
    assert done.returncode == 3 and "text message is not UTF-8" in done.stderr, done.stderr
    assert (8, struct.pack(">H", 1007)) in client_frames(bytes(server.received[0]))

    def created(conn: socket.socket, request: bytes) -> None:
        body = b'{"session_id": "../x\r\nX-Injected: 1"}'
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    server = hostile(created, stream(ws_frame(8, struct.pack(">H", 1000))))
    done = run_client(client, server, "-t", "20", "http://example.com/")
    assert done.returncode == 3 and "invalid session id" in done.stderr, done.stderr
    assert len(server.requests) == 1, server.requests  # no stream request was made with it


# --------------------------------------------------------------------------- fuzzing
@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed (Debian: clang libclang-rt-14-dev; make setup)")
    out = tmp_path_factory.mktemp("c-fuzz")
    probe = out / "probe.c"
    probe.write_text("int LLVMFuzzerTestOneInput(const char *d, unsigned long n) "
                     "{ (void)d; (void)n; return 0; }\n")
    runtime = subprocess.run(["clang", "-fsanitize=fuzzer,address,undefined", str(probe), "-o",
                              str(out / "probe")], capture_output=True, text=True, timeout=120)
    if runtime.returncode != 0:
        pytest.skip(f"no libFuzzer runtime (Debian: libclang-rt-14-dev): {runtime.stderr[-300:]}")
    return build(out, "fuzz") / "fuzz" / "fuzz-client"


def test_regression_inputs(fuzzer: Path) -> None:
    """Each input in fuzz/regressions/ once, under ASan and UBSan: they crashed the old parser
    (wrap-64bit-length is the item 11 overflow; wrap-32bit-length is the same on a device
    with a 32-bit size_t)."""
    inputs = sorted((FUZZ_DIR / "regressions").iterdir())
    assert {p.name for p in inputs} >= {"wrap-64bit-length", "wrap-32bit-length"}
    done = subprocess.run([str(fuzzer), *map(str, inputs)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Executed {inputs[-1]}" in done.stderr


def test_fuzz_smoke(fuzzer: Path, tmp_path: Path) -> None:
    """A bounded libFuzzer run from the seed corpus: no crash, no leak, no sanitizer report."""
    done = subprocess.run([sys.executable, str(FUZZ_DIR / "run.py"), str(fuzzer), str(tmp_path),
                           "20"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "crashes found: 0" in done.stdout, done.stdout
    executions = re.search(r"fuzz-c: (\d+) executions", done.stdout)
    assert executions and int(executions.group(1)) > 10_000, done.stdout
    print("\n" + done.stdout.strip())
