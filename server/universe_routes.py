"""``GET /universe?provider=``: the sectors and industries a scan may be narrowed to.

The page fills its sector choices from here, so it only ever offers names the server will
accept (``/scan/start`` answers an unknown sector with a 400). Reading a universe is
synchronous file work, so it runs in a thread; the answer per provider never changes while
the process runs, so it is computed once.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson
from aiohttp import web
from technic.engine.errors import DataError
from technic.engine.providers import provider_for
from technic.engine.scan_config import ScanConfig
from technic.server.requests import API_PROVIDERS, RequestError

# A synthetic universe of n symbols spreads them round-robin over 11 sectors and 3
# industries per sector; 33 symbols are enough to name every one of them.
SYNTHETIC_NAMING_SIZE = 33


@functools.cache
def universe_names(provider: str) -> dict[str, Any]:
    """``{"provider", "sectors", "industries", "symbols"}``; ``symbols`` is the universe size,
    or None for ``synthetic``, whose size is the scan's ``max_symbols``."""
    if provider == "synthetic":
        config = ScanConfig(provider="synthetic", max_symbols=SYNTHETIC_NAMING_SIZE)
    else:
        config = ScanConfig(provider=provider)  # type: ignore[arg-type]
    universe = provider_for(config).universe()
    return {
        "provider": provider,
        "sectors": sorted({str(s) for s in universe.sectors if str(s).strip()}),
        "industries": sorted({str(i) for i in universe.industries if str(i).strip()}),
        "symbols": None if provider == "synthetic" else len(universe),
    }


async def universe_sectors(request: web.Request) -> web.Response:
    provider = request.query.get("provider", "sample")
    if provider not in API_PROVIDERS:
        raise RequestError(f"must be one of {', '.join(API_PROVIDERS)}", field="provider")
    try:
        body = await asyncio.to_thread(universe_names, provider)
    except DataError as error:
        raise RequestError(str(error), status=503, field="provider") from None
    return web.Response(body=orjson.dumps(body), content_type="application/json")
