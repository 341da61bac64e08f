"""The exit status of every ``technic`` command, and of a watched scan by how it ended.

A script that runs ``technic scan`` locally or ``technic watch`` against a server must be able
to tell the same outcomes apart the same way.
"""

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CANCELLED: Final = 130

EXIT_BY_STATUS: Final = {
    "completed": EXIT_OK,
    "failed": EXIT_FAILED,
    "interrupted": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
}
