"""The ``krylon`` command (thin: argument parsing only)."""

def main(argv=None) -> int:
    return 0
