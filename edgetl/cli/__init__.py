"""The ``edgetl`` command line: a thin layer over the Python API (top layer: may import anything,
workstation stages lazily inside commands).

Importing this module must not import torch or onnxruntime: ``edgetl --help`` and the device-side
commands work on a Jetson without the training extra. Commands import their stage lazily.
"""

import errno
import logging
from typing import Any

import click

from edgetl import __version__
from edgetl.cli.declared import FLAGS_KEY
from edgetl.core.options import flag_of
from edgetl.core.world import ProcessRole
from edgetl.errors import ConfigError, EdgetlError, GateError

EXIT_CODES = """\b
Exit codes:
  0  success
  1  user error: a missing file, conflicting options, a missing dependency (one line on stderr)
  2  usage error: an unknown option or a bad value (click's message)
  3  a failed gate or regression: an export's parity/INT8/fp16 gate, edgetl verify (and build-engine's
     check of the new engine), bench latency --baseline"""


class GateFailed(click.ClickException):
    """A failed gate or regression, printed as one line: exit code 3."""

    exit_code = 3


class EdgetlGroup(click.Group):
    """Turns every EdgetlError into one line: exit code 3 for a GateError (a failed gate or regression),
    1 for any other (a user mistake). Click's usage errors keep their code, 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GateError as exc:
            raise GateFailed(str(exc)) from None
        except ConfigError as exc:  # its fields named by the running command's flags
            flags = ctx.meta.get(FLAGS_KEY, {})
            raise click.ClickException(_rank_prefix() + exc.naming(lambda name: flags.get(name) or flag_of(name)))
        except EdgetlError as exc:
            raise click.ClickException(_rank_prefix() + str(exc)) from None
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise click.ClickException(
                "{}no space left on the device writing {}: free some space and run the command again (a run "
                "continues with --resume)".format(_rank_prefix(), exc.filename or "a file")
            ) from None


def _rank_prefix() -> str:
    """``[rank N] `` in a process of a distributed run, whose errors mix with the other processes' output."""
    try:
        role = ProcessRole.from_env()
    except EdgetlError:
        return ""
    return "[rank {}] ".format(role.rank) if role.distributed else ""


@click.group(cls=EdgetlGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="edgetl")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only, no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """edgetl: fine-tune a pretrained backbone, export it for Jetson, benchmark it.

    \b
    edgetl weights fetch mobilenet_v2
    edgetl finetune                      # built-in demo dataset
    edgetl finetune data/ --strategy partial --trainable-stages 3
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    form = "%(levelname)s: %(message)s" if verbose else "%(message)s"
    role = ProcessRole.from_env()
    if not role.is_main:  # a distributed run's other processes: errors only, named by rank
        level, quiet, form = max(level, logging.ERROR), True, "[rank {}] {}".format(role.rank, form)
    logging.basicConfig(level=level, format=form)
    ctx.obj = {"progress": not quiet}


def _register() -> None:
    from edgetl.cli import (
        advise_commands,
        bench_commands,
        clean_commands,
        doctor_commands,
        export_commands,
        train_commands,
        verify_commands,
    )

    for module in (
        train_commands,
        export_commands,
        verify_commands,
        advise_commands,
        bench_commands,
        doctor_commands,
        clean_commands,
    ):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
