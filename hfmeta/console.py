"""The ``hfmeta`` console script.

It loads the command line (:mod:`hfmeta.cli`: Click, NumPy, ~0.1 s) itself, so
that a Ctrl-C while that loads is one line and the shell's exit code for SIGINT,
as it is once a command runs (:class:`hfmeta.cli.Group`), not a traceback.
"""
from __future__ import annotations

import sys


def main(argv=None):
    """Console entry point (``hfmeta = hfmeta.console:main``)."""
    try:
        from hfmeta.cli import main as run
    except KeyboardInterrupt:
        print("hfmeta: error: interrupted", file=sys.stderr)
        sys.exit(130)
    run(argv)
