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
    """Remove what dead edgetl processes left in the runs and bundles in and under FOLDERS (temporary files,
    unfinished export staging folders), and caches in $EDGETL_HOME whose source files are gone (or, with
    --older-than, that were not used for that long). Only folders holding edgetl's ownership manifest are
    cleaned; anything else that looks like edgetl's is listed and left alone.

    \b
    edgetl clean --dry-run
    edgetl clean models/ --older-than 30d
    """
    from edgetl.core.cleanup import parse_age, remove, survey

    try:
        age = None if older_than is None else parse_age(older_than)
    except ValueError:
        raise ConfigError(f"--older-than takes a number and a unit (s, m, h or d), got {older_than!r}")
    for folder in folders:
        if not folder.exists():
            raise ConfigError(f"{folder} does not exist")
        if not folder.is_dir():
            raise ConfigError(f"{folder} is a file, not a folder")
    found = survey(folders, age)
    verb = "would remove" if dry_run else "removing"
    for item in found.leftovers:
        click.echo(f"{verb} {item.path} ({item.reason}, {item.size / 1e6:.1f} MB)")
    for item in found.left_alone:
        click.echo(f"not edgetl's, left alone: {item.path} ({item.reason})")
    if not dry_run:
        remove(found.leftovers)
    total = sum(i.size for i in found.leftovers) / 1e6
    click.echo(f"{'would remove' if dry_run else 'removed'} {len(found.leftovers)} item(s), {total:.1f} MB")
    if found.left_alone:
        click.echo(f"left alone {len(found.left_alone)} item(s) that are not edgetl's")


COMMANDS = (clean,)
