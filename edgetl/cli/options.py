"""Click options shared by several commands."""

from typing import Any, Optional

import click


class WorkersParam(click.ParamType):
    """``auto`` (None: from the usable cores) or a worker count >= 0."""

    name = "auto|N"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Optional[int]:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            count = int(value)
        except ValueError:
            self.fail("{!r} is neither 'auto' nor a whole number".format(value), param, ctx)
        if count < 0:
            self.fail("needs 0 or more workers, got {}".format(count), param, ctx)
        return count


workers_option = click.option(
    "--workers",
    type=WorkersParam(),
    default="auto",
    show_default=True,
    help="DataLoader worker processes: 'auto' (the usable cores, at most 8) or a number (0: load in the main process).",
)
