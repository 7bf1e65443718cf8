"""edgetl export: a run folder -> a deployable bundle whose every artifact was checked against
the PyTorch model it came from.

Every file is built in ``OUT/.export-tmp/`` and reaches the bundle only at the end, ``bundle.json`` last
(``edgetl.export.bundle_folder``: which ``--out`` an export may write, its lock and ownership manifest).
Each ONNX variant is written to a temporary file, checked, and only then renamed into the staging folder:
fp32 (and the baked-preprocessing variant) must match PyTorch (parity gate), INT8 must pass the
reduced-precision accuracy gate (edgetl.export.gate: top-1 agreement with fp32 on the val images and the
held-out training images), fp16 must stay close. A failed gate leaves no
file under the artifact's name, keeps it out of ``bundle.json``, and the export raises after
writing ``export_report.json``. ``build_engine.sh`` is always written; ``trt=True`` then builds
the engine, or raises DependencyError (after everything else is written) without TensorRT.

``bundle.json`` records the bundle's lineage (``edgetl.contracts.lineage``): the checkpoint's sha256, which must be
the one the run's training wrote (its ownership manifest), and how each artifact was derived from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx

from edgetl.contracts.bundle import BUILD_SCRIPT, LABELS, ONNX_FILES, REPORT, ModelInfo, write_manifest
from edgetl.contracts.formats import CALIBRATION_CACHE, CONSUMERS
from edgetl.contracts.lineage import LINEAGE, artifact, derive, new_lineage
from edgetl.core.cpu import isa_flags_of_interest
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_path, atomic_write_text, sha256_file
from edgetl.data.folders import DatasetSplit, Sample
from edgetl.data.sampling import balanced_class_weights
from edgetl.errors import CheckpointError, DependencyError, GateError
from edgetl.export.bundle_folder import STAGE, claim_out, lineage_plan, publish
from edgetl.export.config import ExportConfig
from edgetl.export.fp16 import convert_to_fp16
from edgetl.export.gate import sample_warnings
from edgetl.export.gate_inputs import GateInputs, assemble_gate_inputs, empty_images, gate_data_images
from edgetl.export.geometry_report import geometry_accuracy
from edgetl.export.int8_step import HeadRefit, Int8Step, cpu_form_metadata
from edgetl.export.paired_gate import pairs_needed
from edgetl.export.parity import (
    EvalImages,
    Parity,
    compare,
    fp16_failures,
    fp32_failures,
    heldout_images,
    load_eval_images,
    normalized,
    onnx_outputs,
    random_inputs,
    top1,
)
from edgetl.export.quantize import (
    ImageCalibrationReader,
    calibration_samples,
    write_calibration_manifest,
)
from edgetl.export.targets import EXTRA_FOLDERS, TargetInputs, engine_copies, preflight, write_targets
from edgetl.export.torch_to_onnx import ExportModule, export_onnx, finish_onnx, module_outputs, onnx_metadata
from edgetl.export.verification import write_verification
from edgetl.runtime.verify import VerificationError
from edgetl.train.checkpoint import load_run, preprocess_of
from edgetl.train.run_folder import check_checkpoint
from edgetl.trt.build import build_bundle_engine
from edgetl.trt.calibration_cache import write_cache_for
from edgetl.trt.plan import EnginePlan, build_script, onnx_versions, plan_engine, resolve_trt_release

torch = require("torch")
REPORT_FORMAT = "edgetl-export-report-v2"
RANDOM_INPUTS = 8


class _GateFailed(Exception):
    """Internal: an artifact did not pass its check (its temporary file is discarded)."""


class _Export:
    """State of one export; each method produces one artifact."""

    def __init__(self, config: ExportConfig, checkpoint_sha: str) -> None:
        self.config = config
        self.run = Path(config.run)
        self.out = Path(config.out) if config.out else self.run
        self.stage = self.out / STAGE  # every file is built here, then renamed into place (bundle_folder)
        self.removed = []  # type: List[str]
        self.model, self.payload = load_run(self.run)
        self.spec = preprocess_of(self.payload)
        self.trt_release = resolve_trt_release(config.trt_version)
        self.opset, self.ir_version = onnx_versions(self.trt_release, config.opset)
        self.input_name, self.output_name = config.tensor_names
        self.softmax = config.softmax
        self.checkpoint_sha = checkpoint_sha  # of the best.pt checked against the run's ownership manifest
        self.val_samples = DatasetSplit.load(self.run).val
        self.images = load_eval_images(self.val_samples, self.spec, config.val_images, config.seed)
        self._images_by_geometry = {self.spec.geometry: self.images}  # type: Dict[str, EvalImages]
        self.reference_module = ExportModule(self.model, softmax=self.softmax).eval()
        self.reference = self._torch(normalized(self.images.crops, self.spec))
        self.random = random_inputs(RANDOM_INPUTS, self.spec, "NCHW", config.seed)
        self.random_pixels = random_inputs(RANDOM_INPUTS, self.spec, "NHWC", config.seed)
        self.manifest = {
            "run": str(self.run.resolve()),
            "checkpoint_sha256": self.checkpoint_sha,
            "class_names": list(self.payload["class_names"]),
            "arch": self.payload["arch"],
            "strategy": self.payload["strategy"],
            "models": {},
            "engines": {},
            LINEAGE: new_lineage(self.checkpoint_sha),
        }
        # lineage entries of what an earlier export of this checkpoint left (bundle_folder.lineage_plan): still
        # listed unless this export replaces or removes it (a --for folder not asked for now stays, say)
        self.kept: Dict[str, Dict[str, Any]] = {}
        self.report = {
            "format": REPORT_FORMAT,
            "run": str(self.run),
            "out": str(self.out),
            "checkpoint_sha256": self.checkpoint_sha,
            "config": asdict(config),
            "trt_version": asdict(self.trt_release),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "output_kind": self.output_kind,
            "artifacts": [],
            "failures": [],
        }
        self.fp32_outputs = None  # type: Optional[np.ndarray]

    @property
    def output_kind(self) -> str:
        return "probabilities" if self.softmax else "logits"

    def _torch(self, batch: np.ndarray) -> np.ndarray:
        return module_outputs(self.reference_module, batch)

    def _metadata(self, kind: str) -> Dict[str, str]:
        return onnx_metadata(
            self.payload,
            self.spec,
            self.checkpoint_sha,
            model_kind=kind,
            input_layout="NHWC uint8" if kind == "baked" else "NCHW float32",
            output_kind=self.output_kind,
        )

    def _gated(self, kind: str, write: Callable[[Path], None], check: Callable[[Path], Dict[str, Any]]) -> bool:
        """Write an artifact to a temporary file, check it, and rename it into place only if it passes."""
        file = ONNX_FILES[kind]
        entry = {"file": file, "kind": kind}  # type: Dict[str, Any]
        try:
            with atomic_path(self.stage / file) as tmp:
                write(tmp)
                entry.update(check(tmp))
                if entry["failures"]:
                    raise _GateFailed()
                sha = sha256_file(tmp)
        except _GateFailed:
            self.removed.append(file)  # an older file of that name would now look valid
            entry["status"] = "failed"
            self.report["failures"] += ["{}: {}".format(file, f) for f in entry["failures"]]
            self.report["artifacts"].append(entry)
            return False
        entry["status"] = "passed"
        self.report["artifacts"].append(entry)
        info = ModelInfo(
            file,
            kind,
            self.input_name,
            self.output_name,
            "NHWC" if kind == "baked" else "NCHW",
            self.output_kind,
            self.config.batch,
            sha,
            self.config.int8_form if kind == "int8" else None,
            cpu_form_metadata(self.config).get("int8_cpu_isa") if kind == "int8" else None,
        )
        self.manifest["models"][kind] = asdict(info)
        if kind in ("fp32", "baked"):
            self._lineage()[file] = artifact(self.checkpoint_sha, "fp32", "onnx export")
        elif kind == "int8":
            derive(self.manifest, file, ONNX_FILES["fp32"], "int8", f"int8 quantization ({self.config.int8_form} form)")
        else:
            derive(self.manifest, file, ONNX_FILES["fp32"], "fp16", "fp16 conversion")
        return True

    def _lineage(self) -> Dict[str, Dict[str, Any]]:
        """The manifest's lineage entries, by artifact."""
        return self.manifest[LINEAGE]["artifacts"]

    def _parity(
        self,
        path: Path,
        inputs: Optional[np.ndarray],
        reference_random: Optional[np.ndarray],
        layout: str,
        optimize: bool = True,
    ) -> Tuple[Dict[str, Any], Parity, np.ndarray]:
        """Report section, parity and real-image outputs of an ONNX file against PyTorch
        (random ``inputs`` too, unless None; ``optimize``: see OnnxRuntimeRunner)."""
        prepare = self._normalized if layout == "NCHW" else None
        real = onnx_outputs(path, self.images.crops, self.config.batch, prepare=prepare, optimize=optimize)
        candidate, reference = real, self.reference
        if inputs is not None:
            candidate = np.concatenate([real, onnx_outputs(path, inputs, self.config.batch)])
            reference = np.concatenate([self.reference, reference_random])
        parity = compare(reference, candidate, len(real))
        return {"parity": parity.to_dict(), "val_top1": top1(real, self.images.labels)}, parity, real

    def fp32(self) -> bool:
        def check(path: Path) -> Dict[str, Any]:
            section, parity, self.fp32_outputs = self._parity(path, self.random, self._torch(self.random), "NCHW")
            return dict(section, failures=fp32_failures(parity))

        module = ExportModule(self.model, softmax=self.softmax)
        return self._gated("fp32", self._onnx_writer(module, "fp32"), check)

    def _onnx_writer(self, module: ExportModule, kind: str) -> Callable[[Path], None]:
        """Writes ``module`` as the ONNX model of ``kind`` (names, batch, opset and metadata of this export)."""
        return lambda path: export_onnx(
            module, path, self.spec, self.input_name, self.output_name, self.config.batch, self.opset,
            self.ir_version, self._metadata(kind),
        )  # fmt: skip

    def baked(self) -> bool:
        def check(path: Path) -> Dict[str, Any]:
            reference_random = self._torch(normalized(self.random_pixels, self.spec))
            section, parity, _ = self._parity(path, self.random_pixels, reference_random, "NHWC")
            return dict(section, failures=fp32_failures(parity))

        module = baked_module(self.model, self.spec, self.softmax)
        return self._gated("baked", self._onnx_writer(module, "baked"), check)

    def int8(self) -> bool:
        config = self.config
        samples, source = calibration_samples(self.run, config.calib_data, config.calib_size, config.seed)
        manifest_path = calibration_manifest_path(Path(config.calib_dir), self.run)
        write_calibration_manifest(
            manifest_path,
            samples,
            {
                "run": str(self.run.resolve()),
                "source": source,
                "seed": config.seed,
                "requested_size": config.calib_size,
                "method": config.calib_method,
                "int8_form": config.int8_form,
            },
        )
        reader = ImageCalibrationReader(samples, self.spec, self.input_name, config.batch or 1)
        train = DatasetSplit.load(self.run).train
        heldout = heldout_images(train, samples, self.spec, config.gate_images, config.seed)
        gate_inputs = self._gate_inputs(heldout, train)
        judged = gate_inputs.record["images"]
        self.report["warnings"] = sample_warnings(len(samples), config.calib_size, judged, config.max_int8_drop)
        optimize = config.int8_form == "cpu"
        fp32_path = self.stage / ONNX_FILES["fp32"]

        def outputs(path: Path) -> Tuple[Dict[str, Any], np.ndarray]:
            # random inputs break calibration: parity on the val images only
            section, _, val = self._parity(path, None, None, "NCHW", optimize=optimize)
            return section, np.concatenate([val, self._outputs(path, gate_inputs.crops, optimize)])

        def check(path: Path) -> Dict[str, Any]:
            return dict(
                step.sections[path],
                int8_form=config.int8_form,
                **cpu_form_metadata(config),
                cpu_isa_flags=isa_flags_of_interest(),
                calibration={
                    "manifest": str(manifest_path),
                    "images": len(samples),
                    "source": source,
                    "method": config.calib_method,
                },
                gate_inputs=gate_inputs.record,
            )

        reference = np.concatenate([self.fp32_outputs, self._outputs(fp32_path, gate_inputs.crops, True)])
        metadata = dict(self._metadata("int8"), int8_form=config.int8_form, **cpu_form_metadata(config))
        with tempfile.TemporaryDirectory(prefix="edgetl-int8-") as tmp:
            step = Int8Step(
                config, fp32_path, reader, metadata, self.ir_version, outputs, reference, self.images.labels, Path(tmp),
                inputs=gate_inputs.parts, head=self._head_refit(heldout, train),
            )  # fmt: skip
            passed = self._gated("int8", step.write, check)
        if passed and config.int8_form == "trt":  # its scales, for the consumers that calibrate themselves
            self.manifest["calibration_cache"] = write_cache_for(
                self.stage / CALIBRATION_CACHE, self.stage / ONNX_FILES["int8"], fp32_path, config.trt_version
            )
            derive(self.manifest, CALIBRATION_CACHE, ONNX_FILES["int8"], "int8", "tensorrt calibration cache")
        else:
            self.removed.append(CALIBRATION_CACHE)  # an older cache would now look valid
        return passed

    def _gate_inputs(self, heldout: EvalImages, train: List[Sample]) -> GateInputs:
        """What the INT8 gate judges after the val images (edgetl.export.gate_inputs)."""
        config = self.config
        gate_data = empty_images(self.spec)
        if config.gate_data is not None:
            gate_data = gate_data_images(Path(config.gate_data), self.spec, config.gate_images, config.seed)
        return assemble_gate_inputs(
            val_count=len(self.images), heldout=heldout, gate_data=gate_data,
            view_sources=[Path(p) for p in self.images.paths] + [Path(s.path) for s in train], spec=self.spec,
            max_points=config.max_int8_drop, seed=config.seed, gate_data_dir=config.gate_data or "",
        )  # fmt: skip

    def _head_refit(self, heldout: EvalImages, train: List[Sample]) -> HeadRefit:
        """The head recovery step's labelled hold-out (the val images, then as many held-out training images as
        the paired bound needs, fixed now) and its fit images (the rest of the training split)."""
        needed = pairs_needed(self.config.max_int8_drop / 100.0) or 0
        extra = min(max(0, needed - len(self.images)), len(heldout))
        held = set(heldout.paths[:extra])
        labels = np.concatenate([self.images.labels, heldout.labels[:extra]])
        paths = sorted(self.images.paths + heldout.paths[:extra])
        record = {
            "images": len(labels),
            "val": len(self.images),
            "heldout_train": extra,
            "paths_sha256": hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest(),
            "fit_on": "the training split without these images",
        }
        pool = [s for s in train if str(s.path) not in held]
        run_config = self.payload.get("config") or {}
        reason = None
        if self.payload["strategy"] != "feature-extractor" or self.payload["head"]["kind"] != "linear":
            reason = "the run is not a feature extractor with a linear head"
        class_weight = None
        if run_config.get("balance", "none") != "none":
            weights = balanced_class_weights([s.label for s in pool], len(self.payload["class_names"]))
            class_weight = torch.tensor(weights, dtype=torch.float64)
        return HeadRefit(
            labels, lambda: load_eval_images(pool, self.spec, len(pool), self.config.seed),
            len(self.payload["class_names"]), self._normalized, record, reason,
            float(run_config.get("label_smoothing", 0.0)), class_weight,
        )  # fmt: skip

    def _outputs(self, path: Path, crops: np.ndarray, optimize: bool) -> np.ndarray:
        """ONNX outputs of uint8 crops (NCHW float model); no rows for no crops."""
        if not len(crops):
            return self.fp32_outputs[:0]
        return onnx_outputs(path, crops, self.config.batch, prepare=self._normalized, optimize=optimize)

    def _normalized(self, crops: np.ndarray) -> np.ndarray:
        return normalized(crops, self.spec)

    def fp16(self) -> bool:
        def write(path: Path) -> None:
            onnx.save(convert_to_fp16(onnx.load(str(self.stage / ONNX_FILES["fp32"]))), str(path))
            finish_onnx(path, self.ir_version, self._metadata("fp16"))

        def check(path: Path) -> Dict[str, Any]:
            section, parity, _ = self._parity(path, self.random, self._torch(self.random), "NCHW")
            return dict(section, failures=fp16_failures(parity))

        return self._gated("fp16", write, check)

    def images_for(self, geometry: str) -> EvalImages:
        """The same val images laid out in ``geometry`` (decoded once per geometry: the report and targets share)."""
        if geometry not in self._images_by_geometry:
            spec = replace(self.spec, geometry=geometry)
            self._images_by_geometry[geometry] = load_eval_images(
                self.val_samples, spec, self.config.val_images, self.config.seed
            )
        return self._images_by_geometry[geometry]

    def geometry_accuracy(self) -> None:
        """Val top-1 under every deployment geometry beside the run's own (edgetl.export.geometry_report)."""
        own = {"val_top1": top1(self.fp32_outputs, self.images.labels), "images": len(self.images)}
        self.report["geometry"] = geometry_accuracy(
            self.stage / ONNX_FILES["fp32"], self.images_for, self.spec, self.config.batch, own
        )

    def engine_plans(self) -> Tuple[List[EnginePlan], List[str]]:
        """The engine build for the requested precision if its ONNX passed (also written as build_engine.sh),
        and notes on what is not planned."""
        precision = self.config.precision
        notes = []
        if precision == "int8" and self.config.int8_form == "cpu":
            precision = "fp32"  # the CPU INT8 form cannot become an engine
            notes.append(
                "model_int8.onnx is the CPU form (unsigned activations), which TensorRT rejects: this "
                "script builds fp32; re-export with --int8 --int8-form trt for an INT8 engine"
            )
        plan = plan_engine(
            self.trt_release,
            precision,
            self.input_name,
            self.output_name,
            (self.config.batch or -1, 3, self.spec.input_size, self.spec.input_size),
            self.config.profile(),
            self.config.workspace_mib,
            self.config.timing_cache,
            self.config.dla_core,
            engine_copies(self.config),
            int8_fp32_layers(self.stage / ONNX_FILES["int8"]) if precision == "int8" else (),
        )
        if {v: k for k, v in ONNX_FILES.items()}[plan.onnx] not in self.manifest["models"]:
            return [], notes + ["no {} engine: {} did not pass its gate (see {})".format(precision, plan.onnx, REPORT)]
        if plan.calibration_cache and "calibration_cache" not in self.manifest:
            return [], notes + ["no {} engine: the INT8 model and its calibration cache did not pass".format(precision)]
        return [plan], notes

    def targets(self) -> None:
        """The --for folders (edgetl.export.targets), from this bundle's checked files and the model."""
        sections, failures, stale = write_targets(TargetInputs.of_export(self))
        self.report["failures"] += failures
        self.removed += stale
        if sections:
            self.report["targets"] = sections
            self.manifest["targets"] = {n: s["folder"] for n, s in sections.items() if s["status"] == "passed"}
        for name in self.manifest.get("targets", {}):
            for folder in (CONSUMERS[name].folder,) + EXTRA_FOLDERS.get(name, ()):
                self._lineage()[str(folder)] = artifact(self.checkpoint_sha, self.config.precision, f"--for {name}")

    def _kept_lineage(self) -> None:
        """List ``kept`` in the manifest (its --for folders under ``targets`` too)."""
        folders = {t.folder: name for name, t in CONSUMERS.items() if t.folder}
        for name, entry in self.kept.items():
            if name in self.removed or name in self._lineage():
                continue
            self._lineage()[name] = entry
            if name in folders:
                self.manifest.setdefault("targets", {})[folders[name]] = str(self.out / name)

    def write_bundle(self) -> None:
        plans, notes = self.engine_plans()
        self.report["script_notes"] = notes
        self.manifest["engines"] = {p.engine: p.to_dict() for p in plans}
        train = DatasetSplit.load(self.run).train
        self.manifest["verification"] = self.report["verification"] = write_verification(
            self.stage, self.manifest["models"], self.images, self.fp32_outputs,
            lambda count: load_eval_images(train, self.spec, count, self.config.seed), self.spec,
        )  # fmt: skip
        script = self.stage / BUILD_SCRIPT
        atomic_write_text(
            script, build_script(plans, self.trt_release, notes, self.manifest["verification"]["reference_scale"])
        )
        os.chmod(str(script), 0o755)
        if self.out.resolve() != self.run.resolve():
            atomic_write_text(self.stage / LABELS, "".join(c + "\n" for c in self.payload["class_names"]))
            self.spec.save(self.stage / "preprocess.json")
        self._kept_lineage()
        write_manifest(self.stage, self.manifest)

    def save_report(self) -> None:
        self.report["status"] = "failed" if self.report["failures"] else "passed"
        atomic_write_text(self.stage / REPORT, json.dumps(self.report, indent=2, default=float) + "\n")


def int8_fp32_layers(path: Path) -> Tuple[str, ...]:
    """The nodes the INT8 fallback kept in fp32, from the INT8 model's metadata (none without the model)."""
    if not path.is_file():
        return ()
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return tuple(json.loads(metadata.get("int8_fp32_layers", "[]")))


def calibration_manifest_path(calib_dir: Path, run: Path) -> Path:
    """``CALIB_DIR/<run name>-<hash of its absolute path>/manifest.json``: two runs of the same name never share
    (and overwrite) a manifest."""
    key = hashlib.sha256(str(run.resolve()).encode("utf-8")).hexdigest()[:8]
    return calib_dir / "{}-{}".format(run.resolve().name, key) / "manifest.json"


def baked_module(model: Any, spec: Any, softmax: bool) -> ExportModule:
    """The module exported as ``model_baked.onnx``: uint8 NHWC pixels in, normalisation in the graph."""
    return ExportModule(model, baked=spec, softmax=softmax)


def export_run(config: ExportConfig, on_report: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Export ``config.run``; returns the report. ``on_report`` sees the report before a failure is raised.

    Raises GateError when a gate fails, DependencyError when ``trt`` is set and TensorRT is not importable
    (after the ONNX models, build_engine.sh, bundle.json and export_report.json are written). The report saves
    ``config.resolved()``, the options as this export ran them."""
    config = config.resolved()
    preflight(config)
    run = Path(config.run)
    if not (run / "split.json").is_file() or not (run / "best.pt").is_file():
        raise CheckpointError(
            "{} is not a run folder with best.pt and split.json (its validation images feed the parity gate)".format(
                run
            )
        )
    check_checkpoint(run)
    checkpoint = sha256_file(run / "best.pt")
    out = Path(config.out) if config.out else run
    with ExitStack() as held:
        owner = claim_out(held, out, run, checkpoint)  # locked until the bundle is complete
        stale, kept = lineage_plan(out, checkpoint)
        job = _Export(config, checkpoint)
        job.removed += stale  # what another checkpoint left: removed even when this export fails
        job.kept = kept
        held.callback(shutil.rmtree, str(job.stage), True)  # what a failure left staged (the bundle is untouched)
        passed = job.fp32()
        if passed:
            if config.bake_preprocess:
                job.baked()
            if config.precision == "int8":
                job.int8()
            if config.precision == "fp16" and job.trt_release.strongly_typed:
                job.fp16()
            job.geometry_accuracy()
            if not job.report["failures"]:
                job.targets()
            job.write_bundle()
        job.report["removed_stale"] = sorted(n for n in stale if not (job.stage / n).exists())  # not replaced
        job.save_report()
        publish(owner, job.stage, job.removed, manifest_ready=passed)
        pending = None  # type: Optional[Exception]
        if config.trt and not job.report["failures"]:
            pending = _build_engine(job)
            job.save_report()
            publish(owner, job.stage, [], manifest_ready=True)
    if on_report is not None:
        on_report(job.report)
    if job.report["failures"]:
        raise GateError("export failed: {}; see {}".format("; ".join(job.report["failures"]), job.out / REPORT))
    if pending is not None:
        raise pending
    return job.report


def _build_engine(job: _Export) -> Optional[Exception]:
    """Build the engine; returns the DependencyError to raise later when TensorRT is missing."""
    try:
        config = job.config
        engine = build_bundle_engine(
            job.out,
            config.precision,
            (config.min_batch, config.opt_batch, config.max_batch),
            config.workspace_mib,
            config.timing_cache,
            config.dla_core,
        )
    except VerificationError as exc:  # the engine was built and moved aside as .rejected
        job.report["engine"] = {"status": "failed verification", "reason": str(exc)}
        job.report["failures"].append(str(exc))
        return None
    except DependencyError as exc:
        job.report["engine"] = {"status": "not built", "reason": str(exc)}
        return DependencyError(
            "--trt: {}. The ONNX model(s) and build_engine.sh are in {}: run "
            "'sh build_engine.sh' there on the device".format(exc, job.out)
        )
    job.report["engine"] = {"status": "built", "file": engine.name}
    return None
