"""``python -m bench``: the benchmark harness (see bench/harness.py)."""

from bench.harness import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
