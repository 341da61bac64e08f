"""``GET /openapi.json``: a valid OpenAPI 3.1 document that names every route, and the
server's real answers, on every path a client can take, match it.

The deterministic half of the contract; ``tests/test_fuzz.py`` is the other half
(schemathesis generating requests from the document).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.test_server import Service, completed_with_accuracy, serve, settings_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLOW_SCAN = {"provider": "synthetic", "max_symbols": 60_000, "bars": 300}


class Contract:
    """Checks answers against the document the server itself serves."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:technic", resource)
        self.checked: set[tuple[str, str, int]] = set()

    def _response(self, path: str, method: str, status: int) -> dict[str, Any]:
        operation = self.document["paths"][path][method.lower()]
        assert str(status) in operation["responses"], (
            f"{method} {path} answered {status}, which the document does not list"
        )
        response = operation["responses"][str(status)]
        if "$ref" in response:
            response = self.document["components"]["responses"][response["$ref"].split("/")[-1]]
        return response

    async def check(
        self, answer: aiohttp.ClientResponse, path: str, method: str = "GET"
    ) -> aiohttp.ClientResponse:
        response = self._response(path, method, answer.status)
        self.checked.add((method, path, answer.status))
        body = await answer.read()
        for name, header in response.get("headers", {}).items():
            if header.get("required"):
                assert name in answer.headers, f"{method} {path} {answer.status}: no {name}"
        media = answer.headers.get("Content-Type", "").split(";")[0].strip()
        if not response.get("content"):
            assert not body, f"{method} {path} {answer.status}: a body the document omits"
            return answer
        assert media in response["content"], f"{method} {path} {answer.status}: {media}"
        schema = response["content"][media]["schema"]
        where = f"{method} {path} {answer.status}"
        if media == "application/json":
            self._validate(orjson.loads(body), schema, where)
        elif media == "text/event-stream":
            events = sse_events(body.decode())
            assert events, f"{where}: no event"
            for event in events:
                self._validate(event, schema, where)
                self._validate(orjson.loads(event["data"]), self._content_schema(schema), where)
        return answer

    def _content_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema of an event's ``data`` (``contentSchema``, which JSON Schema only
        annotates: checked here by hand, as schemathesis does)."""
        event = self.document["components"]["schemas"][schema["$ref"].split("/")[-1]]
        return event["properties"]["data"]["contentSchema"]

    def _validate(self, instance: Any, schema: dict[str, Any], where: str) -> None:
        ref = {"$ref": "urn:technic" + schema["$ref"]} if "$ref" in schema else schema
        validator = Draft202012Validator(
            ref, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(instance)
        ]
        assert not errors, f"{where}: {errors[:5]}"


def sse_events(text: str) -> list[dict[str, Any]]:
    """Events with data, as an EventSource dispatches them (unnamed ones are ``message``)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields.setdefault("event", "message")
            events.append(fields)
    return events


async def until_status(get: Any, scan_id: str, status: str, timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await (await get(f"/scan/progress/{scan_id}")).json())["status"] != status:
        assert asyncio.get_running_loop().time() < deadline, f"{scan_id} never {status}"
        await asyncio.sleep(0.05)


async def contract_of(service: Service) -> Contract:
    answer = await service.get("/openapi.json")
    assert answer.status == 200 and answer.content_type == "application/json"
    document = await answer.json()
    validate_spec(document)
    return Contract(document)


def routes_of(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the application serves, as documented."""
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        routes.add((route.method.lower(), route.resource.canonical))
    return routes


async def test_document_is_valid_and_names_every_route(database_url: str, tmp_path: Path) -> None:
    async with serve(settings_for(database_url, tmp_path)) as service:
        contract = await contract_of(service)
        documented = {
            (method, path) for path, item in contract.document["paths"].items() for method in item
        }
        assert documented == routes_of(service.app)
        assert "securitySchemes" not in contract.document["components"]
        start = contract.document["components"]["schemas"]["StartRequest"]
        assert start["properties"]["max_symbols"]["maximum"] == 100_000
    # With a token: the document is still public, and says which routes need the token.
    settings = settings_for(database_url, tmp_path, api_token=TOKEN, max_symbols_cap=20)
    async with serve(settings) as service:
        contract = await contract_of(service)
        document = contract.document
        assert document["security"] == [{"bearer": []}]
        assert document["paths"]["/health"]["get"]["security"] == []
        assert "401" in document["paths"]["/scans"]["get"]["responses"]
        start = document["components"]["schemas"]["StartRequest"]
        assert start["properties"]["max_symbols"]["maximum"] == 20


async def test_real_answers_match_the_document(database_url: str, tmp_path: Path) -> None:
    settings = settings_for(
        database_url,
        tmp_path,
        api_token=TOKEN,
        max_concurrent_scans=1,
        max_queued_scans=0,
        max_connections=2,
    )
    async with serve(settings) as service:
        contract = await contract_of(service)
        check = contract.check
        start = "/scan/start"

        async def post(path: str, body: Any, **headers: str) -> aiohttp.ClientResponse:
            return await service.post(path, body, headers={**AUTH, **headers})

        async def get(url: str, **headers: str) -> aiohttp.ClientResponse:
            return await service.get(url, headers={**AUTH, **headers})

        slow = (await (await check(await post(start, SLOW_SCAN), start, "POST")).json())["scan_id"]
        await check(await get(f"/scan/progress/{slow}"), "/scan/progress/{scan_id}")
        await check(await get(f"/scan/results/{slow}"), "/scan/results/{scan_id}")  # 409
        await check(await get("/scan/active"), "/scan/active")
        full = await check(await post(start, {"max_symbols": 5}), start, "POST")
        assert full.status == 429
        ws = await service.session.ws_connect(f"{service.url}/scan/ws/{slow}?token={TOKEN}")
        sse = await get(f"/scan/stream/{slow}")
        assert sse.status == 200 and sse.content_type == "text/event-stream"
        await check(await get(f"/scan/stream/{slow}"), "/scan/stream/{scan_id}")  # 503: cap
        sse.close()
        await ws.close()
        cancel = "/scan/cancel/{scan_id}"
        await check(await post(f"/scan/cancel/{slow}", None), cancel, "POST")
        await until_status(get, slow, "cancelled")
        await check(await post(f"/scan/cancel/{slow}", None), cancel, "POST")

        sync = {"max_symbols": 20, "async_mode": False}
        await check(await post(start, sync), start, "POST")
        seed = {
            "max_symbols": 20,
            "min_tech_rating": 10.0,
            "sectors": ["Information Technology"],
            "async_mode": True,
        }
        done = (await (await check(await post(start, seed), start, "POST")).json())["scan_id"]
        await until_status(get, done, "completed")
        await check(await get(f"/scan/progress/{done}"), "/scan/progress/{scan_id}")
        results = "/scan/results/{scan_id}"
        await check(await get(f"/scan/results/{done}?sort=-tech_rating&limit=3"), results)
        await check(await get(f"/scan/results/{done}?format=csv"), results)
        await check(await get(f"/scan/results/{done}?sort=nonsense"), results)
        stream = "/scan/stream/{scan_id}"
        final = await (await check(await get(f"/scan/stream/{done}"), stream)).text()
        assert "event: completed" in final
        await check(await get(f"/scan/stream/{done}?events=named"), stream)
        last_id = sse_events(final)[-1]["id"]  # resuming after the terminal event: 204
        await check(await get(f"/scan/stream/{done}", **{"Last-Event-ID": last_id}), stream)
        await check(await get(f"/scan/ws/{done}"), "/scan/ws/{scan_id}")  # not an upgrade: 400
        unknown = str(uuid.uuid4())
        for path in ("progress", "results", "stream", "ws"):
            await check(await get(f"/scan/{path}/{unknown}"), f"/scan/{path}/{{scan_id}}")
        await check(await post(f"/scan/cancel/{unknown}", None), cancel, "POST")

        await check(await post(start, b"{not json"), start, "POST")
        await check(await post(start, {"max_symbols": 21}), start, "POST")
        await check(await post(start, {"colour": "red"}), start, "POST")
        await check(await post(start, b"[" * 70_000), start, "POST")  # 413
        await check(await service.post(start, {"max_symbols": 5}), start, "POST")  # 401
        await check(await service.get("/scans"), "/scans")  # 401

        for _ in range(100):
            if (await (await service.get("/health")).json())["database_backlog"] == 0:
                break
            await asyncio.sleep(0.05)
        await check(await get("/scans?limit=2"), "/scans")
        await check(await get("/scans?status=completed&since=1h"), "/scans")
        await check(await get("/scans?since=forever"), "/scans")
        await check(await get("/scans?since=1h&until=1m"), "/scans")
        await check(await get("/scans?until=never"), "/scans")
        await check(await get("/stats/stages?since=1h&by_bucket=true"), "/stats/stages")
        await check(await get("/stats/stages"), "/stats/stages")
        await check(await get("/stats/stages?by_bucket=maybe"), "/stats/stages")
        for provider in ("sample", "synthetic", "csv"):
            await check(await get(f"/universe?provider={provider}"), "/universe")
        await check(await service.get("/health"), "/health")
        await check(await get("/metrics"), "/metrics")
        await check(await service.get("/openapi.json"), "/openapi.json")
        await check(await service.get("/"), "/")
        await check(await service.get("/static/app.js"), "/static/{name}")
        await check(await service.get("/static/style.css"), "/static/{name}")
        await check(await service.get("/static/favicon.svg"), "/static/{name}")
        await check(await service.get("/static/missing.js"), "/static/{name}")
        await check(await service.get("/favicon.ico"), "/favicon.ico")

    # After a restart the same scan is read from the database, not from memory.
    async with serve(settings) as restarted:
        check = (await contract_of(restarted)).check
        headers = AUTH
        progress = await restarted.get(f"/scan/progress/{done}", headers=headers)
        assert (
            "published_at" not in await (await check(progress, "/scan/progress/{scan_id}")).json()
        )
        page = await restarted.get(f"/scan/results/{done}?sort=signal", headers=headers)
        assert (await (await check(page, "/scan/results/{scan_id}")).json())["count"] > 0

    statuses = {status for _, _, status in contract.checked}
    assert {200, 202, 204, 400, 401, 404, 409, 413, 429, 503} <= statuses


async def test_trend_answers_match_the_document(database_url: str, tmp_path: Path) -> None:
    async with serve(settings_for(database_url, tmp_path)) as service:
        check = (await contract_of(service)).check
        path = "/stats/stages/trend"
        assert (await (await check(await service.get(path), path)).json())["stages"] == []
        await check(await service.get(f"{path}?interval=1h&stage=finalization&bucket=40"), path)
        for bad in ("interval=2d", "stage=warp", "bucket=1000-5000"):
            assert (await check(await service.get(f"{path}?{bad}"), path)).status == 400


async def test_accuracy_answers_match_the_document(database_url: str, tmp_path: Path) -> None:
    async with serve(settings_for(database_url, tmp_path)) as service:
        check = (await contract_of(service)).check
        path = "/stats/accuracy"
        empty = await (await check(await service.get(path), path)).json()
        assert empty["groups"] == [] and empty["recent"] == []
        await completed_with_accuracy(service, "sample", 300, "sample", 5.0)
        await completed_with_accuracy(service, "polygon", 2500, "polygon@5/min", -100.0)
        full = await (await check(await service.get(f"{path}?since=1h"), path)).json()
        assert len(full["groups"]) == 2 and len(full["recent"]) == 2
        await check(await service.get(f"{path}?since=2d&until=1d&provider=polygon"), path)
        await check(await service.get(f"{path}?bucket=2500"), path)
        for bad in ("since=forever", "bucket=1000-5000", "until=-1d"):
            answer = await check(await service.get(f"{path}?{bad}"), path)
            assert answer.status == 400
