"""Click parameter types and callbacks shared by the commands."""
from __future__ import annotations

import os

import click


class InShape(click.ParamType):
    """``c,h,w`` -> ``(c, h, w)``: an input shape of three whole numbers >= 1."""

    name = "C,H,W"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).split(",")
        if len(parts) == 3 and all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            return tuple(int(p) for p in parts)
        self.fail(f"give c,h,w as three whole numbers >= 1, got {value!r}", param, ctx)


def in_existing_folder(ctx, param, value):
    """Callback of an output-file option: its folder must exist (checked before any work,
    so a long run does not fail at its first write)."""
    if value is not None:
        folder = os.path.dirname(os.path.abspath(value))
        if not os.path.isdir(folder):
            raise click.BadParameter(f"folder {os.path.dirname(value)!r} does not exist")
    return value
