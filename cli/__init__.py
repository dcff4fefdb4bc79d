"""The ``hfmeta`` command line (Click).  Thin commands over the library.

Each command lives in its own module of this package and exposes a Click
object named ``command``; :data:`COMMANDS` lists the modules in help order.
Errors a user can cause end with one line on stderr and a non-zero exit code,
never a traceback (see :class:`Group`).
"""
from __future__ import annotations

import importlib
import select
import sys

import click

from hfmeta import __version__
from hfmeta.backend import BackendError
from hfmeta.errors import UserError

class CleanError(click.ClickException):
    """A user error shown as one line: ``hfmeta: error: <message>``."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None):
        click.echo(f"hfmeta: error: {self.format_message()}", err=True)


#: Click's "no arguments: show the help", a UsageError only in name
_SHOW_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def usage_line(error: click.UsageError) -> click.ClickException:
    """Click's usage error (usage, hint, blank line, message) as one line that
    keeps the message and points to the command's help; exit code 2 as Click's."""
    if isinstance(error, _SHOW_HELP):
        return error
    where = error.ctx.command_path if error.ctx is not None else "hfmeta"
    return CleanError(f"{error.format_message()} (see '{where} --help')", error.exit_code)


def stdout_reader_gone() -> bool:
    """True when standard output is a pipe whose reader has gone (``poll`` reports an
    error on its write end), so that a broken pipe elsewhere is still an error."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):    # not a file (a test's capture)
        return False
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


class Group(click.Group):
    """Click group that turns errors a user can cause into :class:`CleanError`."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:          # hfmeta's own options
            raise usage_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:          # a command's options, or a command's own check
            raise usage_line(e) from None
        except (UserError, BackendError) as e:
            raise CleanError(str(e), getattr(e, "exit_code", 1)) from None
        except BrokenPipeError as e:
            if stdout_reader_gone():     # `hfmeta info | head -1`: Click's own EPIPE
                raise                    # handling stops quietly, as Unix tools do
            raise CleanError(str(e), 1) from None
        except (OSError, ValueError) as e:
            # missing/corrupt files (h5py raises OSError), bad shapes or names
            raise CleanError(str(e) or type(e).__name__, 1) from None
        except MemoryError as e:     # NumPy's _ArrayMemoryError says how much it asked for
            raise CleanError(f"out of memory: {e}" if str(e) else "out of memory", 1) from None
        except OverflowError as e:   # e.g. --epochs 1e308 steps
            raise CleanError(f"a number too large: {e}", 1) from None
        except (KeyboardInterrupt, click.Abort):
            # Ctrl-C outside the loops that save and say where they stopped (setting up a
            # run, gradcheck, bench): one line and the shell's code for SIGINT, not
            # Click's "Aborted!" with exit 1
            raise CleanError("interrupted", 130) from None


COMMANDS = ("train", "evaluate", "meta_train", "compare", "plot", "gradcheck", "bench", "data",
            "info")


@click.group("hfmeta", cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="NumPy on the CPU or CuPy on the GPU.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="Floating-point type of weights and activations.")
@click.option("--seed", metavar="N", type=click.IntRange(0, 2 ** 63 - 1), default=0,
              show_default=True, help="Seed for init, shuffling, sampling.")
@click.option("-v", "--verbose", count=True, help="More output (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only the final summary and errors.")
@click.version_option(__version__, prog_name="hfmeta")
@click.pass_context
def cli(ctx, device, dtype, seed, verbose, quiet):
    """hfmeta: learned second-order optimizers (MLHF, SLSTM) with hand-written derivatives."""
    ctx.ensure_object(dict)
    from hfmeta.backend import keep_freed_memory
    keep_freed_memory()           # large NumPy buffers are recycled, not re-faulted
    ctx.obj.update(device=device, dtype=dtype, seed=seed,
                   verbosity=-1 if quiet else verbose)


for _name in COMMANDS:
    cli.add_command(importlib.import_module(f"{__name__}.{_name}").command)


def main(argv=None):
    """Run the command line (the console script, :func:`hfmeta.console.main`, calls it)."""
    cli.main(args=argv, prog_name="hfmeta")
