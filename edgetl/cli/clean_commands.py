"""CLI: ``clean`` (torch-free): remove what killed processes and deleted datasets left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import click

from edgetl.errors import ConfigError


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--older-than",
    metavar="AGE",
    default=None,
    help="Also remove data caches not used for AGE (30d, 12h, 45m, 90s). Default: only caches whose source is gone.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed, and remove nothing.")
def clean(folders: Sequence[Path], older_than: Optional[str], dry_run: bool) -> None:
    """Remove temporary files of dead processes, unfinished export staging folders, and caches whose source
    files are gone (or, with --older-than, that were not used for that long) under $EDGETL_HOME and FOLDERS.

    \b
    edgetl clean --dry-run
    edgetl clean models/ --older-than 30d
    """
    from edgetl.core.cleanup import find_leftovers, parse_age, remove

    try:
        age = None if older_than is None else parse_age(older_than)
    except ValueError:
        raise ConfigError("--older-than takes a number and a unit (s, m, h or d), got {!r}".format(older_than))
    leftovers = find_leftovers(folders, age)
    for item in leftovers:
        click.echo("{} {} ({}, {:.1f} MB)".format("would remove" if dry_run else "removing", item.path, item.reason,
                                                  item.size / 1e6))  # fmt: skip
    if not dry_run:
        remove(leftovers)
    click.echo(
        "{} {} item(s), {:.1f} MB".format(
            "would remove" if dry_run else "removed", len(leftovers), sum(i.size for i in leftovers) / 1e6
        )
    )


COMMANDS = (clean,)
