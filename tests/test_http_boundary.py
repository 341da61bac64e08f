"""The HTTP boundary as a careless client, a browser page on another site, or an attacker
meets it, against a real ``technic serve`` subprocess over raw sockets and aiohttp clients:

- a connection from a client's pool is still usable after an SSE stream ends;
- malformed requests (aiohttp's own parser errors included) answer 400 in the JSON error
  shape, without echoing the request, and cost one INFO log line each, no traceback;
- a cross-site page cannot start or cancel scans (Content-Type, Origin, Host checks);
- a watcher that resumes after a server restart learns how its scan ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from technic.config import Settings, SettingsError
from technic.server.cursor import Cursor

from tests.live_server import Server, running_server

TOKEN = "s3cret"
APP_ORIGIN = "https://app.example"
SLOW_SCAN = {"provider": "synthetic", "max_symbols": 60_000, "bars": 300}


@pytest.fixture(scope="module")
def server(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default set-up (no token), with an origin allowlist and INFO logging."""
    data_dir = tmp_path_factory.mktemp("technic-data")
    with running_server(
        pg_server_url,
        data_dir,
        "http-boundary.log",
        LOG_LEVEL="INFO",
        TECHNIC_ALLOWED_ORIGINS=APP_ORIGIN,
    ) as service:
        yield service


@pytest.fixture(scope="module")
def token_server(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("technic-data")
    with running_server(
        pg_server_url, data_dir, "http-boundary-token.log", TECHNIC_API_TOKEN=TOKEN
    ) as service:
        yield service


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"].startswith("application/json"), self
        return orjson.loads(self.body)


def raw_request(
    server: Server,
    method: str = "GET",
    path: str = "/health",
    headers: dict[str, str | bytes] | None = None,
    body: bytes = b"",
) -> bytes:
    """One HTTP/1.1 request as bytes, exactly as given (Host added unless given)."""
    fields: dict[str, str | bytes] = {"Host": f"127.0.0.1:{server.port}"}
    fields.update(headers or {})
    if body:
        fields.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {path} HTTP/1.1".encode()]
    for name, value in fields.items():
        encoded = value if isinstance(value, bytes) else value.encode()
        lines.append(name.encode() + b": " + encoded)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def exchange(server: Server, raw: bytes) -> RawResponse:
    """Send bytes on a fresh connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return RawResponse(int(status_line.split()[1]), headers, body)


def json_headers(**extra: str) -> dict[str, str | bytes]:
    return {"Content-Type": "application/json", **extra}


# -- 4: a stream leaves the pooled connection usable ----------------------------------------------


async def test_a_pooled_connection_works_after_reading_a_stream_to_its_end(server: Server) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):
            async with session.post(f"{server.url}/scan/start", json={"max_symbols": 5}) as started:
                assert started.status == 202, await started.text()
                scan_id = (await started.json())["scan_id"]
            async with session.get(f"{server.url}/scan/stream/{scan_id}") as stream:
                assert stream.status == 200
                # Said before the first byte: this connection ends with the stream.
                assert stream.headers["Connection"] == "close"
                events = (await stream.read()).decode()
            assert "event: completed" in events
            # The very next request of the same pool (one connection at most) must work.
            async with session.post(f"{server.url}/scan/cancel/{scan_id}") as cancel:
                assert cancel.status == 200
                assert (await cancel.json())["status"] == "completed"


# -- 6: malformed requests are 400s in the JSON error shape ---------------------------------------

MALFORMED = {
    "bad method": (lambda s: b"FO(O /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"FO(O"),
    "header over 8 KiB": (
        lambda s: raw_request(s, headers={"X-Padding": "a" * 9000}),
        b"aaaaaaaaaa",
    ),
    "unsupported Content-Encoding": (
        lambda s: raw_request(
            s, "POST", "/scan/start", json_headers(**{"Content-Encoding": "br"}), b"{}"
        ),
        b"Brotli",
    ),
    "gzip Content-Encoding on a plain body": (
        lambda s: raw_request(
            s, "POST", "/scan/start", json_headers(**{"Content-Encoding": "gzip"}), b"{}"
        ),
        b"zlib",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_requests_are_json_400s_that_do_not_echo_them(
    server: Server, case: str
) -> None:
    build, echo = MALFORMED[case]
    response = await exchange(server, build(server))
    assert response.status == 400, response
    body = response.json()
    assert set(body) == {"error", "field"} and body["error"], body
    assert echo not in response.body


@pytest.mark.parametrize("path", ["/scans?since=999999w", "/stats/stages?since=999999w"])
async def test_a_window_beyond_the_bound_is_400(server: Server, path: str) -> None:
    response = await exchange(server, raw_request(server, path=path))
    assert response.status == 400
    assert response.json() == {"error": "must be at most 3660d, got '999999w'", "field": "since"}


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", "Bearer s3crét".encode()])
async def test_a_non_ascii_authorization_header_is_400(token_server: Server, value: bytes) -> None:
    response = await exchange(
        token_server, raw_request(token_server, path="/scans", headers={"Authorization": value})
    )
    assert response.status == 400
    assert response.json() == {
        "error": "the Authorization header must be ASCII",
        "field": "Authorization",
    }
    good = raw_request(token_server, path="/scans", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await exchange(token_server, good)).status == 200


# -- 7: one INFO line per bad request, no traceback; a client leaving is not an error -------------


async def leave_mid_body(server: Server) -> None:
    raw = raw_request(server, "POST", "/scan/start", json_headers(**{"Content-Length": "100"}))
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw + b'{"max_sym')
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()


def new_log_lines(server: Server, offset: int) -> list[str]:
    return server.log_path.read_bytes()[offset:].decode(errors="replace").splitlines()


async def test_each_malformed_request_costs_one_info_line_without_traceback(
    server: Server,
) -> None:
    kinds = [
        *(build(server) for build, _ in MALFORMED.values()),
        raw_request(server, "POST", "/scan/start", json_headers(), b"{not json"),
        raw_request(server, "POST", "/scan/start", {"Content-Type": "text/plain"}, b"{}"),
        raw_request(server, path="/scans?since=999999w"),
        raw_request(server, path="/scan/results/not-a-scan"),
    ]
    rounds = 25
    offset = server.log_path.stat().st_size
    for _ in range(rounds):
        for raw in kinds:
            assert (await exchange(server, raw)).status in (400, 404, 415)
        await leave_mid_body(server)
    await asyncio.sleep(0.5)  # let the server write what it logs
    # What the scans of earlier tests may still log is not about these requests.
    lines = [line for line in new_log_lines(server, offset) if " technic.engine." not in line]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines[:20]
    assert all(" INFO " in line for line in lines), [x for x in lines if " INFO " not in x][:5]
    # One line per bad request at most; the clients that left cost nothing.
    assert len(lines) <= rounds * len(kinds), len(lines)
    assert len(lines) >= rounds * len(kinds) // 2  # and they are still visible to operators


# -- 9: cross-site requests ------------------------------------------------------------------------


async def test_a_cross_site_page_cannot_start_or_cancel_scans(server: Server) -> None:
    start = raw_request(
        server, "POST", "/scan/start", {"Content-Type": "text/plain"}, b'{"max_symbols": 5}'
    )
    response = await exchange(server, start)
    assert response.status == 415
    assert response.json() == {
        "error": "Content-Type must be application/json, got text/plain",
        "field": "Content-Type",
    }
    for origin in ("http://evil.example", "null", f"http://localhost:{server.port + 1}"):
        evil = raw_request(
            server, "POST", "/scan/start", json_headers(Origin=origin), b'{"max_symbols": 5}'
        )
        response = await exchange(server, evil)
        assert response.status == 403, origin
        assert response.json() == {"error": f"origin {origin} is not allowed", "field": "Origin"}
    scan_id = server.start_scan(max_symbols=5)
    cancel = raw_request(
        server, "POST", f"/scan/cancel/{scan_id}", {"Origin": "http://evil.example"}
    )
    assert (await exchange(server, cancel)).status == 403


@pytest.mark.parametrize(
    "origin", ["own", APP_ORIGIN, None], ids=["the page itself", "allowlisted", "no origin"]
)
async def test_the_page_the_allowlist_and_the_cli_may_start_scans(
    server: Server, origin: str | None
) -> None:
    headers = json_headers()
    if origin is not None:
        headers["Origin"] = server.url if origin == "own" else origin
    response = await exchange(
        server, raw_request(server, "POST", "/scan/start", headers, b'{"max_symbols": 5}')
    )
    assert response.status == 202, response
    scan_id = response.json()["scan_id"]
    # The WebSocket follows the same rule: the page's own origin is never locked out.
    async with aiohttp.ClientSession() as session:
        ws_headers = {"Origin": headers["Origin"]} if origin is not None else {}
        async with session.ws_connect(f"{server.url}/scan/ws/{scan_id}", headers=ws_headers) as ws:
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT


async def test_a_foreign_host_header_is_refused(server: Server) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1."""
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
        response = await exchange(server, raw_request(server, headers={"Host": host}))
        assert response.status == 400, host
        body = response.json()
        assert body["field"] == "Host" and "TECHNIC_ALLOWED_HOSTS" in body["error"]
    for host in (f"localhost:{server.port}", f"[::1]:{server.port}", f"LOCALHOST:{server.port}"):
        response = await exchange(server, raw_request(server, headers={"Host": host}))
        assert response.status == 200, host


def test_allowed_hosts_and_origins_settings() -> None:
    default = Settings.from_env({})
    assert default.allowed_hosts == ("localhost", "127.0.0.1", "::1")
    assert Settings.from_env({"HOST": "0.0.0.0"}).allowed_hosts == default.allowed_hosts
    assert Settings.from_env({"HOST": "10.1.2.3"}).allowed_hosts[-1] == "10.1.2.3"
    assert dataclasses.replace(default, host="scanner.lan").allowed_hosts[-1] == "scanner.lan"
    listed = Settings.from_env({"TECHNIC_ALLOWED_HOSTS": "Scanner.example:8000, [::1]"})
    assert listed.allowed_hosts == ("scanner.example", "::1")
    assert Settings.from_env({"TECHNIC_ALLOWED_HOSTS": "*"}).allowed_hosts == ("*",)
    origins = Settings.from_env({"TECHNIC_ALLOWED_ORIGINS": "https://a.example/, *"})
    assert origins.allowed_origins == ("https://a.example", "*")
    for name, value in [
        ("TECHNIC_ALLOWED_HOSTS", "http://scanner.example"),
        ("TECHNIC_ALLOWED_HOSTS", "scanner.example/path"),
        ("TECHNIC_ALLOWED_ORIGINS", "a.example"),
        ("TECHNIC_ALLOWED_ORIGINS", "https://a.example/path"),
    ]:
        with pytest.raises(SettingsError) as error:
            Settings.from_env({name: value})
        assert error.value.name == name


# -- 10: resuming after a restart ------------------------------------------------------------------


async def sse_blocks(response: aiohttp.ClientResponse, *, until_seq: int | None = None) -> list:
    """Events as (id, event, snapshot) until the stream ends or ``until_seq`` is reached."""
    events, block = [], {}
    async with asyncio.timeout(60):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(":")
                block[name] = value.removeprefix(" ")
                continue
            if "data" in block:
                events.append((block["id"], block.get("event"), orjson.loads(block["data"])))
                if until_seq is not None and events[-1][2]["seq"] >= until_seq:
                    break
            block = {}
    return events


async def test_a_watcher_resuming_after_a_restart_learns_its_scan_was_interrupted(
    pg_server_url: str, tmp_path: Path
) -> None:
    with running_server(pg_server_url, tmp_path, "http-boundary-restart.log") as service:
        scan_id = service.start_scan(**SLOW_SCAN)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{service.url}/scan/stream/{scan_id}") as stream:
                before = await sse_blocks(stream, until_seq=4)
            cursor = before[-1][0]
            assert Cursor.parse(cursor).seq == before[-1][2]["seq"] >= 4
            assert before[-1][2]["status"] == "running"
            service.kill()  # a crash: no goodbye to anyone
            service.start()
            old_client = str(before[-1][2]["seq"])  # a bare seq, as clients before epochs sent
            for resume in (cursor, old_client):
                started = time.monotonic()
                async with session.get(
                    f"{service.url}/scan/stream/{scan_id}", headers={"Last-Event-ID": resume}
                ) as stream:
                    assert stream.status == 200, resume
                    after = await sse_blocks(stream)
                assert time.monotonic() - started < 10
                assert [e[2]["status"] for e in after] == ["interrupted", "interrupted"]
                assert Cursor.parse(after[0][0]).epoch != Cursor.parse(cursor).epoch
                async with session.ws_connect(
                    f"{service.url}/scan/ws/{scan_id}?since={resume}"
                ) as ws:
                    message = await ws.receive(timeout=10)
                    assert orjson.loads(message.data)["status"] == "interrupted"
            # What the new stream issued still resumes it: nothing more to say, 204.
            async with session.get(
                f"{service.url}/scan/stream/{scan_id}", headers={"Last-Event-ID": after[-1][0]}
            ) as stream:
                assert stream.status == 204


def test_cursors_parse_and_print() -> None:
    assert Cursor.parse("k3f9a2c1.82") == Cursor("k3f9a2c1", 82)
    assert str(Cursor("k3f9a2c1", 82)) == "k3f9a2c1.82"
    assert Cursor.parse(" 82 ") == Cursor(None, 82) and str(Cursor(None, 82)) == "82"
    for bad in ("", "-1", "1.5.2", "a.b", ".3", "x y.3", "٣", "a" * 65 + ".1", "1" * 19):
        with pytest.raises(ValueError):
            Cursor.parse(bad)
    assert re.fullmatch(r"[0-9a-z]+", Cursor.new_epoch())
