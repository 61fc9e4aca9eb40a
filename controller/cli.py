"""Command-line entry point (placeholder until the runner lands)."""


def main() -> int:
    return 0
