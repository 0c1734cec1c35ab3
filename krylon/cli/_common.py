"""What several ``krylon`` sub-commands share."""

from __future__ import annotations

import sys


def command_line() -> str:
    """The command as the user typed it, for the records written next to results."""
    return "krylon " + " ".join(sys.argv[1:])
