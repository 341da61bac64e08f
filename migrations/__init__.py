"""The schema as plain SQL files, ``NNNN_name.sql``, applied in order by ``storage.migrate``.

A package only so that the files travel inside the wheel and are found by import, wherever
technic is installed.
"""

from pathlib import Path

DIRECTORY = Path(__file__).parent
