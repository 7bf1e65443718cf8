"""CLI: ``advise`` (measured strategy choice), ``inspect`` (PNGs of what the backbone learned), ``embed``."""

import json
from pathlib import Path
from typing import Optional, Tuple

import click

from edgetl.analysis.pilot_config import PilotConfig
from edgetl.cli.options import batch_size_option, device_option, json_option, out_option, workers_option
from edgetl.contracts.backbones import BACKBONES, DEFAULT_ARCH
from edgetl.errors import ConfigError

_P = PilotConfig  # defaults live in one place: the dataclass
_DEVICE = device_option("auto")
_BATCH = batch_size_option(32)


@click.command()
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(sorted(BACKBONES)), default=DEFAULT_ARCH, show_default=True)
@click.option(
    "--val-split",
    type=float,
    default=None,
    help="Hold out this fraction per class when DATA has no train/ and val/ folders (default 0.2).",
)
@click.option(
    "--max-images-per-class",
    type=int,
    default=100,
    show_default=True,
    help="Similarity is measured on at most this many training images per class.",
)
@click.option(
    "--pilot", is_flag=True, help="Also train the candidate strategies on a subset and compare them, with confidence."
)
@click.option(
    "--pilot-epochs",
    type=int,
    default=_P.epochs,
    show_default=True,
    help="Epochs of the partial and full pilot runs (the best epoch on the subset's val counts).",
)
@click.option(
    "--pilot-budget",
    type=float,
    default=_P.time_budget_s,
    show_default=True,
    help="Seconds the whole pilot may take (estimated before it starts; the subset shrinks or the pilot is refused).",
)
@click.option(
    "--pilot-images-per-class",
    type=int,
    default=_P.train_per_class,
    show_default=True,
    help="Training images per class in each pilot run (val: up to 20 per class).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@_DEVICE
@workers_option
@json_option("the advice")
@click.pass_context
def advise(
    ctx: click.Context,
    data: Optional[Path],
    arch: str,
    val_split: Optional[float],
    max_images_per_class: int,
    pilot: bool,
    pilot_epochs: int,
    pilot_budget: float,
    pilot_images_per_class: int,
    seed: int,
    device: str,
    workers: Optional[int],
    as_json: bool,
) -> None:
    """Recommend a transfer strategy for DATA from measured size x similarity (default: the demo set).

    Similarity is measured with the frozen pretrained backbone: cross-validated linear-probe and k-NN
    accuracy on its features, and the ImageNet classifier's confidence. Prints the quadrant, the
    strategy and the exact `edgetl finetune` command.

    \b
    edgetl advise photos/
    edgetl advise photos/ --pilot          # also train each candidate on a subset (about 5 min) and compare
    edgetl advise photos/ --json
    """
    from edgetl.analysis.advise import advise as run_advise
    from edgetl.analysis.advise import format_advice

    if max_images_per_class < 2:
        raise ConfigError("--max-images-per-class must be >= 2 (cross-validation needs 2 per class)")
    pilot_config = (
        PilotConfig(
            epochs=pilot_epochs,
            train_per_class=pilot_images_per_class,
            time_budget_s=pilot_budget,
            device=device,
            workers=workers,
            seed=seed,
        )
        if pilot
        else None
    )
    report = run_advise(
        data,
        arch,
        val_split=val_split,
        seed=seed,
        max_per_class=max_images_per_class,
        device=device,
        workers=workers,
        pilot=pilot_config,
        progress=ctx.obj["progress"] and not as_json,
    )
    click.echo(json.dumps(report, indent=2) if as_json else format_advice(report))


@click.command("inspect")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--filters", is_flag=True, help="The first conv layer's filters (pretrained vs fine-tuned).")
@click.option("--activations", is_flag=True, help="Strongest activation maps of --stage for each IMAGE.")
@click.option("--similar", is_flag=True, help="Nearest neighbours of each IMAGE among the images in --data.")
@click.option("--top-activating", is_flag=True, help="Images in --data that excite --channel of --stage most.")
@click.option("--stage", default=None, help="Named stage of the backbone, e.g. stage5 (an unknown name lists them).")
@click.option("--channel", type=int, default=None, help="Channel of --stage for --top-activating.")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of images (searched recursively) for --similar / --top-activating.",
)
@click.option("-k", "k", type=int, default=8, show_default=True, help="Neighbours / images to show.")
@click.option("--maps", type=int, default=8, show_default=True, help="Activation maps per image.")
@out_option("Folder for the PNGs (default RUN/inspect).", file_okay=False)
@_BATCH
@_DEVICE
@workers_option
def inspect_run(
    run: Path,
    images: Tuple[Path, ...],
    filters: bool,
    activations: bool,
    similar: bool,
    top_activating: bool,
    stage: Optional[str],
    channel: Optional[int],
    data: Optional[Path],
    k: int,
    maps: int,
    out: Optional[Path],
    batch_size: int,
    device: str,
    workers: Optional[int],
) -> None:
    """Write PNGs of what RUN's backbone learned; IMAGES feed --activations and --similar.

    \b
    edgetl inspect models/photos --filters
    edgetl inspect models/photos --activations cat.jpg --stage stage5
    edgetl inspect models/photos --similar cat.jpg --data photos/ -k 8
    edgetl inspect models/photos --top-activating --stage stage6 --channel 12 --data photos/
    """
    _check_inspect_options(images, filters, activations, similar, top_activating, stage, channel, data, k, maps)
    from edgetl.analysis.embeddings import run_model, stage_output_module
    from edgetl.analysis.inspection import (
        activations_png,
        default_output_dir,
        filters_png,
        similar_png,
        top_activating_png,
    )

    model = run_model(run)
    if stage is not None:
        stage_output_module(model, stage)  # a bad --stage fails before anything is written
    out = out or default_output_dir(run)
    options = dict(batch_size=batch_size, device=device, workers=workers)
    if filters:
        path, note = filters_png(model, out)
        click.echo("wrote {} ({})".format(path, note))
    for image in images if activations else ():
        path, channels = activations_png(model, image, stage, out, maps)
        click.echo("wrote {} (channels {})".format(path, ", ".join(map(str, channels))))
    for image in images if similar else ():
        path, neighbours = similar_png(model, image, data, out, k, **options)
        click.echo("wrote {}".format(path))
        for rank, (neighbour, distance) in enumerate(neighbours, 1):
            click.echo("  {:>2}. {:10.4f}  {}".format(rank, distance, neighbour))
    if top_activating:
        path, rows = top_activating_png(model, stage, channel, data, out, k, **options)
        click.echo("wrote {}".format(path))
        for rank, (image, value) in enumerate(rows, 1):
            click.echo("  {:>2}. {:10.4g}  {}".format(rank, value, image))


def _check_inspect_options(
    images: Tuple[Path, ...],
    filters: bool,
    activations: bool,
    similar: bool,
    top_activating: bool,
    stage: Optional[str],
    channel: Optional[int],
    data: Optional[Path],
    k: int,
    maps: int,
) -> None:
    if not (filters or activations or similar or top_activating):
        raise ConfigError("choose at least one of --filters, --activations, --similar, --top-activating")
    needs = [
        (activations and not images, "--activations needs at least one IMAGE"),
        (similar and not images, "--similar needs at least one IMAGE (the query)"),
        (images and not (activations or similar), "IMAGES are used by --activations or --similar; add one of them"),
        ((activations or top_activating) and stage is None, "--activations and --top-activating need --stage NAME"),
        ((similar or top_activating) and data is None, "--similar and --top-activating need --data DIR"),
        (top_activating and channel is None, "--top-activating needs --channel C"),
        (k < 1 or maps < 1, "-k and --maps must be >= 1"),
    ]
    for failed, message in needs:
        if failed:
            raise ConfigError(message)


@click.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Features file (.npy); the file list goes next to it as .json.", required=True, dir_okay=False)
@_BATCH
@_DEVICE
@workers_option
def embed(run: Path, data: Path, out: Path, batch_size: int, device: str, workers: Optional[int]) -> None:
    """Penultimate features of every image under DATA by RUN's backbone, for your own retrieval or clustering.

    \b
    edgetl embed models/photos photos/ --out features.npy     # + features.json (file list)
    """
    from edgetl.analysis.embeddings import run_model
    from edgetl.analysis.inspection import embed as run_embed

    features, sidecar, shape = run_embed(
        run_model(run), data, out, batch_size=batch_size, device=device, workers=workers
    )
    click.echo("wrote {} ({} images x {} features) and {}".format(features, shape[0], shape[1], sidecar))


COMMANDS = (advise, inspect_run, embed)
