"""The ``technic`` command line: ``scan``, ``serve``, ``watch``, ``migrate``, ``history``.

This package is the top layer: it parses arguments, then calls the engine (a scan run here),
the server (``serve``), storage (``migrate``, ``history``) or a remote server over HTTP
(``watch``, ``scan --server``). Nothing below it imports it.
"""
