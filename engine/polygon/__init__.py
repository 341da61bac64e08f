"""The ``polygon`` provider: daily bars from the Massive (Polygon.io) REST API.

``source``    what the server or the CLI hands a scan: key, host, rate, bar store folder
``client``    HTTP with a token-bucket rate limiter shared by the process, retries, threads
``batch``     a batch of requests counted as the stage's units, cancellable
``calendar``  NYSE sessions by rule, and when a day's bar is final
``plan``      grouped days or per-symbol windows: whichever costs fewer requests
``store``     the incremental bar store under the data directory
``provider``  the provider itself: plan, fetch, keep, detect splits, build the block
``tickers``   the market universe from the reference endpoints
"""
