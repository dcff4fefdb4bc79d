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


def on_command_line(ctx, name):
    """Whether option ``name`` of the command of ``ctx`` was typed, not left at its default."""
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


def not_empty(ctx, param, value):
    """Callback of a name or path option: an empty string is refused (it would otherwise
    read as "not given" and fall back to the default)."""
    if value == "":
        raise click.BadParameter("give a name, not an empty string")
    return value


def file_name(ctx, param, value):
    """Callback of an output-file option: a file name, not empty and not a folder."""
    value = not_empty(ctx, param, value)
    if value is not None and (os.path.isdir(value) or value.endswith(os.sep)):
        raise click.BadParameter(f"{value!r} is a folder; give a file name")
    return value


def in_existing_folder(ctx, param, value):
    """Callback of an output-file option: a :func:`file_name` in a folder that exists
    and may be written, checked before any work, so a long run does not fail at its
    first write."""
    value = file_name(ctx, param, value)
    if value is not None:
        folder = os.path.dirname(os.path.abspath(value))
        if not os.path.isdir(folder):
            raise click.BadParameter(f"folder {os.path.dirname(value)!r} does not exist")
        if not os.access(folder, os.W_OK):
            raise click.BadParameter(f"cannot write {value!r}: folder "
                                     f"{os.path.dirname(value) or '.'!r} is not writable")
    return value
