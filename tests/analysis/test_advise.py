"""edgetl advise: the size x similarity rule, the similarity measurements, the pilot, the CLI."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.analysis.advise import (
    advise,
    cross_validated_accuracy,
    knn_classify,
    ridge_probe,
    ridge_weights,
    stratified_folds,
)
from edgetl.analysis.pilot import PilotConfig, run_pilot
from edgetl.analysis.rule import (
    KNN_SIMILAR,
    PROBE_SIMILAR,
    PROBE_SUFFICES,
    SMALL_PER_CLASS,
    SimilarityEvidence,
    SizeStats,
    candidate_plans,
    decide,
    features_suffice,
    finetune_command,
    is_similar,
    is_small,
    plan_for,
    quadrant_of,
)
from edgetl.analysis.significance import Z_CLEAR, two_proportion_z
from edgetl.cli import main
from edgetl.contracts.backbones import get_backbone
from edgetl.data.folders import Sample
from edgetl.data.sampling import sample_per_class
from edgetl.train.config import FinetuneConfig

MOBILENET_V2 = get_backbone("mobilenet_v2")  # 9 named stages


def _stats(*counts: int) -> SizeStats:
    return SizeStats(tuple("c{}".format(i) for i in range(len(counts))), counts, 0)


def _evidence(probe_score: float, knn_score: float, classes: int = 4, images: int = 100) -> SimilarityEvidence:
    chance = 1.0 / classes
    return SimilarityEvidence(
        chance + probe_score * (1 - chance), chance + knn_score * (1 - chance), chance, 0.5, images, 5
    )


@pytest.mark.parametrize(
    "counts, small",
    [
        ((999, 999), True),
        ((1000, 1000), False),
        ((10, 999, 5000), True),
        ((10, 1000, 5000), False),
        ((999, 1001), False),  # median of an even count: (999 + 1001) / 2 = 1000 -> large
        ((998, 1000), True),
        ((1, 1, 1), True),
        ((100000, 3), False),
    ],
)
def test_small_means_median_images_per_class_below_1000(counts: tuple, small: bool) -> None:
    assert SMALL_PER_CLASS == 1000
    assert is_small(_stats(*counts)) is small


@pytest.mark.parametrize(
    "probe, knn, similar",
    [
        (1.0, 1.0, True),
        (PROBE_SIMILAR, KNN_SIMILAR, True),
        (PROBE_SIMILAR - 1e-6, 1.0, False),
        (1.0, KNN_SIMILAR - 1e-6, False),
        (0.0, 0.0, False),
        (0.9, 0.3, False),
        (0.5, 0.9, False),
    ],
)
def test_similar_needs_both_probe_and_knn_scores_over_their_thresholds(probe: float, knn: float, similar: bool) -> None:
    evidence = _evidence(probe, knn)
    assert evidence.probe_score == pytest.approx(probe)
    assert is_similar(evidence) is similar


def test_score_is_chance_adjusted() -> None:
    two_classes = SimilarityEvidence(0.5, 0.75, 0.5, 0.1, 10, 2)
    assert two_classes.probe_score == 0.0 and two_classes.knn_score == 0.5


@pytest.mark.parametrize(
    "small, similar, quadrant, strategy, stages",
    [
        (False, False, 1, "full", 9),
        (False, True, 2, "partial", 3),
        (True, False, 3, "partial", 5),
        (True, True, 4, "feature-extractor", 0),
    ],
)
def test_quadrants_and_plans_follow_the_rule(
    small: bool, similar: bool, quadrant: int, strategy: str, stages: int
) -> None:
    assert quadrant_of(small, similar) == quadrant
    plan = plan_for(quadrant, MOBILENET_V2)
    assert (plan.quadrant, plan.strategy, plan.trainable_stages) == (quadrant, strategy, stages)
    assert plan.augment_harder is (quadrant == 3)
    assert (plan.epochs is None) is (strategy == "feature-extractor")  # its linear head is solved


def test_similar_data_trains_fewer_pretrained_layers() -> None:
    large_similar, large_different = plan_for(2, MOBILENET_V2), plan_for(1, MOBILENET_V2)
    assert large_similar.trainable_stages < large_different.trainable_stages
    assert plan_for(4, MOBILENET_V2).trainable_stages < plan_for(3, MOBILENET_V2).trainable_stages


@pytest.mark.parametrize("quadrant", [1, 2, 3, 4])
def test_the_printed_command_is_a_valid_finetune_command(quadrant: int) -> None:
    plan = plan_for(quadrant, MOBILENET_V2)
    command = finetune_command(Path("my photos"), "mobilenet_v2", plan, 0.25)
    words = shlex.split(command)
    assert words[:3] == ["edgetl", "finetune", "my photos"]
    finetune = main.commands["finetune"]
    ctx = finetune.make_context("finetune", words[2:])  # parses with the real options
    launch = ("resume", "weights_", "nproc_per_node")  # how to start the run, not FinetuneConfig's options
    params = {k: v for k, v in ctx.params.items() if k not in launch}
    config = FinetuneConfig(**dict(params, data=str(params["data"]), out=None))  # validates
    assert (config.strategy, config.epochs, config.val_split) == (plan.strategy, plan.epochs, 0.25)
    # finetune's own step sizes and label smoothing: the plans' former fixed rates diverged on real data
    assert (config.lr, config.head_lr_mult, config.weight_decay) == (None, None, None)
    assert config.label_smoothing == FinetuneConfig.label_smoothing
    if plan.strategy == "partial":
        assert config.trainable_stages == plan.trainable_stages
    assert config.augment == ("strong" if plan.augment_harder else "default")  # "augment harder" is in the command


def test_stratified_folds_deal_each_class_over_all_folds() -> None:
    labels = np.array([0] * 10 + [1] * 7)
    folds = stratified_folds(labels, 5, seed=0)
    for label in (0, 1):
        counts = np.bincount(folds[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=0))


def test_probe_and_knn_separate_clusters_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 20)
    centres = rng.normal(0, 1, (4, 64))
    clustered = centres[labels] + rng.normal(0, 0.3, (80, 64))
    noise = rng.normal(0, 1, (80, 64))
    for classify in (ridge_probe, knn_classify):
        assert cross_validated_accuracy(clustered, labels, 4, classify, 5, 0) == 1.0
        assert cross_validated_accuracy(noise, labels, 4, classify, 5, 0) < 0.5  # chance is 0.25


def test_probe_finds_a_linear_rule_that_knn_misses() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    x = rng.normal(0, 1, (200, 30))
    x[:, 0] = 0.5 * (2 * labels - 1)  # one weak but clean direction among 29 loud noisy ones
    assert cross_validated_accuracy(x, labels, 2, ridge_probe, 5, 0) >= 0.95
    assert cross_validated_accuracy(x, labels, 2, knn_classify, 5, 0) < 0.75


def test_sample_per_class_caps_each_class_deterministically() -> None:
    samples = [Sample(Path("{}_{}.jpg".format(label, i)), label) for label in (0, 1) for i in range(10)]
    chosen = sample_per_class(samples, 4, seed=3)
    assert [s.label for s in chosen] == [0] * 4 + [1] * 4
    assert chosen == sample_per_class(list(reversed(samples)), 4, seed=3)
    assert sample_per_class(samples, 100, seed=3) == sorted(samples, key=lambda s: (s.label, str(s.path)))


def _noise_dataset(root: Path, classes: int = 4, per_class: int = 6, size: int = 64) -> Path:
    """Classes of pure uniform noise: nothing pretrained features (or anything) can separate."""
    rng = np.random.default_rng(7)
    for c in range(classes):
        folder = root / "noise{}".format(c)
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "{}.png".format(i))
    return root


def test_advise_on_noise_classes_says_different_small_quadrant_3(
    tmp_path: Path, pretrained_mobilenet_v2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))  # feature cache in a temp folder
    data = _noise_dataset(tmp_path / "noise")
    result = CliRunner().invoke(main, ["-q", "advise", str(data), "--json", "--workers", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["size"]["counts"] == [5, 5, 5, 5] and report["size"]["small"]  # 1 per class held out
    assert not report["similarity"]["similar"]
    assert report["similarity"]["probe_score"] < PROBE_SIMILAR - 0.3
    assert report["similarity"]["confidence"] < 0.5
    assert report["quadrant"] == 3 and report["plan"]["strategy"] == "partial"
    assert "--strategy partial" in report["command"] and report["plan"]["augment_harder"]
    assert list((tmp_path / "home" / "features").glob("*.npz"))


def test_advise_on_demo_data_says_similar_with_high_probe_accuracy(pretrained_mobilenet_v2: Path) -> None:
    from edgetl.analysis.advise import format_advice

    report = advise(None, "mobilenet_v2", max_per_class=20, workers=0)  # features cached in ~/.cache/edgetl
    assert report["similarity"]["similar"] and report["size"]["small"]
    assert report["similarity"]["probe_accuracy"] >= 0.95 and report["similarity"]["knn_accuracy"] >= 0.9
    assert report["quadrant"] == 4 and report["plan"]["strategy"] == "feature-extractor"
    text = format_advice(report)
    for phrase in ("Quadrant 4: small + similar", "linear probe", "k-NN", "confidence", "edgetl finetune --arch"):
        assert phrase in text


def test_pilot_trains_every_candidate_and_compares_with_the_rule(
    make_image_folder, pretrained_mobilenet_v2: Path
) -> None:
    from edgetl.data.folders import load_dataset

    split = load_dataset(make_image_folder(counts={"a": 3, "b": 3}, size=32, split=True))
    config = PilotConfig(epochs=1, train_per_class=2, val_per_class=2, batch_size=4, workers=0)
    pilot = run_pilot(split, "mobilenet_v2", candidate_plans(True, MOBILENET_V2), 4, config)
    assert [r["strategy"] for r in pilot["rows"]] == ["feature-extractor", "partial", "full"]
    assert [r["rule"] for r in pilot["rows"]] == [True, False, False]
    assert (pilot["train_images"], pilot["val_images"]) == (4, 4)
    trainable = [r["params_trainable"] for r in pilot["rows"]]
    assert trainable[0] < trainable[1] < trainable[2]  # the strategies really differ
    for row in pilot["rows"]:
        assert 0.0 <= row["val_top1"] <= 1.0 and row["time_s"] > 0


@pytest.mark.parametrize("samples, dims", [(12, 30), (30, 12)])  # dual and primal system
def test_ridge_weights_solve_the_ridge_problem(samples: int, dims: int) -> None:
    rng = np.random.default_rng(2)
    x, targets = rng.normal(0, 1, (samples, dims)), rng.normal(0, 1, (samples, 3))
    # ridge = least squares on x stacked over sqrt(penalty) * I, targets stacked over zeros
    stacked = np.vstack([x, np.sqrt(0.7) * np.eye(dims)])
    expected = np.linalg.lstsq(stacked, np.vstack([targets, np.zeros((dims, 3))]), rcond=None)[0]
    assert np.allclose(ridge_weights(x, targets, 0.7), expected, atol=1e-10)


@pytest.mark.parametrize(
    "probe, knn, strategy, pilot_advised",
    [
        (1.00, 0.99, "feature-extractor", False),  # the demo data: a frozen base is all it needs
        (0.94, 0.90, "feature-extractor", True),  # digits as advise measured it: the probe alone cannot tell
        (PROBE_SUFFICES, 0.90, "feature-extractor", False),
        (PROBE_SUFFICES - 1e-6, 0.90, "feature-extractor", True),
        (0.85, 0.30, "partial", True),  # borderline and different
        (0.10, 0.05, "partial", False),  # noise: clearly different
    ],
)
def test_small_similar_data_asks_for_the_pilot_unless_the_features_suffice(
    probe: float, knn: float, strategy: str, pilot_advised: bool
) -> None:
    evidence = _evidence(probe, knn, images=1000)  # a probe on 1000 images: its own noise is small
    decision = decide(_stats(400, 400, 400, 400), evidence)
    assert plan_for(decision.quadrant, MOBILENET_V2).strategy == strategy
    assert decision.pilot_advised is pilot_advised and bool(decision.why) is pilot_advised
    assert features_suffice(evidence) is (strategy == "feature-extractor" and not pilot_advised)


def test_a_probe_short_of_perfect_by_its_own_noise_suffices() -> None:
    # 78 of 80 right (accuracy 0.975, score 0.967 on 4 classes): 2 errors are inside the probe's own noise
    few = SimilarityEvidence(0.975, 0.99, 0.25, 0.5, 80, 5)
    assert few.probe_score < PROBE_SUFFICES and features_suffice(few)
    # the same accuracy on 1000 images is 25 errors: measurably short of what trained stages might reach
    many = SimilarityEvidence(0.975, 0.99, 0.25, 0.5, 1000, 5)
    assert not features_suffice(many) and decide(_stats(40, 40, 40, 40), many).pilot_advised


def test_large_similar_data_keeps_the_partial_plan_of_quadrant_2() -> None:
    decision = decide(_stats(5000, 5000), _evidence(0.94, 0.9))
    assert (decision.quadrant, decision.pilot_advised) == (2, False)


RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "realdata.json"


@pytest.mark.skipif(not RESULTS.is_file(), reason="benchmarks/results/realdata.json not recorded")
def test_advice_on_the_recorded_real_datasets_wins_ties_or_asks_for_the_pilot() -> None:
    """The rule on each real dataset's recorded probe and k-NN scores names the measured winner, a strategy tied
    with it within the noise, or asks for the pilot (benchmarks/bench_realdata.py)."""
    datasets = [d for d in json.loads(RESULTS.read_text())["datasets"] if "advise" in d]
    assert datasets
    for data in datasets:
        classes = len(data["classes"])
        per_class = data["train_images"] // classes
        probed = min(per_class, 100) * classes  # advise's --max-images-per-class default
        evidence = _evidence(data["advise"]["probe_score"], data["advise"]["knn_score"], classes, probed)
        decision = decide(_stats(*[per_class] * classes), evidence)
        strategy = plan_for(decision.quadrant, MOBILENET_V2).strategy
        measured = [data["verdict"]["best"]] + data["verdict"]["tied"]
        assert strategy in measured or decision.pilot_advised, data["dataset"]
        assert (strategy, decision.pilot_advised) == (data["advise"]["strategy"], data["advise"]["pilot_advised"])
        if "advised_run" in data:  # advise's own command (its epochs, augmentation), run by the benchmark
            best = max(run["val_top1"] for run in data["runs"])
            z = two_proportion_z(best, data["advised_run"]["val_top1"], data["val_images"])
            assert z < Z_CLEAR or decision.pilot_advised, (data["dataset"], z)


def test_the_text_says_when_the_probe_alone_cannot_tell_and_asks_for_the_pilot() -> None:
    from edgetl.analysis.advise import format_advice

    evidence = _evidence(0.93, 0.85, classes=10, images=400)  # digits as advise measured them
    stats = _stats(*[40] * 10)
    decision = decide(stats, evidence)
    plan = plan_for(decision.quadrant, MOBILENET_V2)
    report = {
        "data": "digits",
        "arch": "mobilenet_v2",
        "size": dict(classes=list(stats.classes), min=40, median=40.0, max=40, balance=1.0, train_total=400),
        "similarity": dict(
            images=400,
            folds=5,
            chance=0.1,
            probe_accuracy=evidence.probe_accuracy,
            probe_score=evidence.probe_score,
            knn_accuracy=evidence.knn_accuracy,
            knn_score=evidence.knn_score,
            confidence=0.12,
            imagenet_labels=[["chain", 3]],
            similar=True,
            suffices=False,
        ),
        "quadrant": decision.quadrant,
        "quadrant_name": "small + similar",
        "plan": dict(asdict(plan)),
        "command": finetune_command(Path("digits"), "mobilenet_v2", plan, None),
        "pilot_advised": decision.pilot_advised,
        "undecided_why": decision.why,
        "time_s": 1.0,
    }
    report["size"].update(val_total=300, small=True)
    text = " ".join(format_advice(report).split())
    assert "the probe alone cannot tell: its score 0.93 is between 0.80 (similar) and 0.97" in text
    assert "Quadrant 4: small + similar (the probe cannot tell whether a frozen base suffices" in text
    assert "--strategy feature-extractor" in text and "run edgetl advise again with --pilot" in text
    assert "already fit this task" not in text
