#!/usr/bin/env python3
"""Thin entry point; the same as the ``da3stream`` console script (see da3stream/cli.py)."""

import sys

from da3stream.cli import main

if __name__ == "__main__":
    sys.exit(main())
