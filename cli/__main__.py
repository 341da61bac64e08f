"""``python -m technic.cli``: the same as the ``technic`` script."""

from technic.cli.main import main

raise SystemExit(main())
