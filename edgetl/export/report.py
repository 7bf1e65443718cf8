"""The export report (``export_report.json``) as the terminal shows it. Reads reports of earlier
versions too (their INT8 artifacts name the form ``int8_target``)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from edgetl.core.tables import text_table
from edgetl.export.recover import recovery_lines


def format_report(report: Dict[str, Any]) -> str:
    """The export report as a terminal table plus its gate lines."""
    rows = []
    for entry in report["artifacts"]:
        parity = entry.get("parity", {})
        rows.append(
            [
                entry["file"],
                entry["status"],
                parity.get("real_inputs", ""),
                parity.get("max_abs_diff", ""),
                parity.get("min_cosine", ""),
                parity.get("top1_agreement", ""),
                entry.get("val_top1", ""),
            ]
        )
    lines = [text_table(["artifact", "status", "images", "max|diff|", "min cosine", "top-1 agree", "val top-1"], rows)]
    for entry in report["artifacts"]:
        gate = entry.get("accuracy_gate")
        if gate:
            lines.append(
                "INT8 ({}): {} gate: top-1 differs from fp32 on {} of {} images, {:.0%} bound {:.2f} points "
                "(<= {:g}); val top-1 {:.2%} vs fp32 {:.2%}".format(
                    entry.get("int8_form", entry.get("int8_target")),
                    gate["verdict"],
                    gate["disagreements"],
                    gate["images"],
                    gate["confidence"],
                    gate["upper_bound_points"],
                    gate["max_points"],
                    gate["reduced_val_top1"],
                    gate["fp32_val_top1"],
                )
            )
            lines += _gate_input_lines(entry)
            lines += recovery_lines(entry)
            lines += _fallback_lines(entry.get("fallback") or {})
    lines += _geometry_lines(report.get("geometry"))
    verification = report.get("verification")
    if verification:
        lines.append(
            "verification sample: {} crops in {} ({} val, {} train) with reference outputs of {}; "
            "check on the device with 'python3 -m edgetl verify BUNDLE'".format(
                verification["images"],
                verification["file"],
                verification["from_val"],
                verification["from_train"],
                ", ".join(sorted(verification["references"])),
            )
        )
    lines += _target_lines(report.get("targets") or {})
    if report.get("removed_stale"):
        lines.append(f"removed (made from another checkpoint than this best.pt): {', '.join(report['removed_stale'])}")
    if "engine" in report:
        lines.append("engine: {}".format(report["engine"].get("file") or report["engine"]["reason"]))
    lines += ["FAILED " + f for f in report["failures"]]
    return "\n".join(lines)


def _gate_input_lines(entry: Dict[str, Any]) -> List[str]:
    """Which inputs beyond the val images the INT8 gate judged, and the paired gate where one decided."""
    lines = []
    inputs = entry.get("gate_inputs") or {}
    if inputs.get("augmented_views") or inputs.get("gate_data"):
        lines.append(
            f"INT8 gate inputs: {inputs['val']} val, {inputs['heldout_train']} held-out train, {inputs['gate_data']} "
            f"--gate-data, {inputs['augmented_views']} augmented views (views of one image are not independent)"
        )
    paired = entry.get("paired_gate")
    if paired:
        lines.append(
            f"INT8 paired gate ({paired['criterion']}): {paired['verdict']}: on {paired['images']} held-out labelled "
            f"images fp32 right / INT8 wrong {paired['fp32_right_int8_wrong']}, the reverse "
            f"{paired['fp32_wrong_int8_right']}: 95% bound {paired['upper_bound_points']:.2f} points "
            f"(<= {paired['max_points']:g}); top-1 {paired['reduced_top1']:.2%} vs fp32 {paired['fp32_top1']:.2%}"
        )
    return lines


def _geometry_lines(section: Optional[Dict[str, Any]]) -> List[str]:
    """Val top-1 of the fp32 model under each deployment geometry, the training one marked."""
    if not section:
        return []
    rows = [
        [name + (" (training)" if name == section["training_geometry"] else ""), row["images"], row["val_top1"],
         row["consumer"]]
        for name, row in section["geometries"].items()
    ]  # fmt: skip
    return [
        "val top-1 by deployment geometry (fp32, ONNX Runtime; {}):".format(section["exactness"]),
        text_table(["geometry", "images", "val top-1", "consumer"], rows),
        "imagenet normalisation: {}".format(section["imagenet_normalization"]),
    ]


def _fallback_lines(fallback: Dict[str, Any]) -> List[str]:
    """What the accuracy-aware fallback did (nothing to say when it was not needed or not tried)."""
    if "kept_fp32" not in fallback:
        return []
    before = fallback["without_fallback"]
    tried = ", ".join(str(a["layers"]) for a in fallback["attempts"])
    if fallback["status"] != "passed":
        return [
            "INT8 fallback failed: up to {} layers in fp32 (tried {}) did not pass".format(
                fallback["max_layers"], tried
            )
        ]
    kept = fallback["kept_fp32"]
    lines = [
        "INT8 fallback: {} layer(s) kept in fp32 (tried {}; without them {} of {} images disagreed): {}".format(
            len(kept), tried, before["disagreements"], before["images"], ", ".join(kept)
        )
    ]
    latency = fallback.get("latency")
    if latency:
        lines.append(
            "INT8 fallback cost here: p50 {:.2f} ms vs {:.2f} ms without it (fp32 {:.2f} ms): {:.2f}x fp32 "
            "instead of {:.2f}x".format(
                latency["fallback_p50_ms"],
                latency["int8_p50_ms"],
                latency["fp32_p50_ms"],
                latency["speedup_vs_fp32_with_fallback"],
                latency["speedup_vs_fp32_without_fallback"],
            )
        )
    return lines


def _target_lines(targets: Dict[str, Any]) -> List[str]:
    """One line per --for folder: where it is and the val top-1 figures it was checked with."""
    lines = []
    for name, section in targets.items():
        if section["status"] != "passed":
            lines.append("{}: not written ({})".format(name, "; ".join(section["failures"])))
        elif "nvinfer_scalar_std_top1" in section:
            lines.append(
                "{}: {} (val top-1 in {}: {:.2%} under nvinfer's scalar std, {:.2%} with the exact "
                "model_pixels.onnx; {:.2%} in the run's own geometry)".format(
                    name,
                    section["folder"],
                    section["geometry"],
                    section["nvinfer_scalar_std_top1"],
                    section["exact_pixels_model_top1"],
                    section["training_geometry_top1"],
                )
            )
        elif "device_val_top1" in section:
            lines.append(
                "{}: {} (val top-1 {:.2%} in {}, {:.2%} in the run's own geometry)".format(
                    name, section["folder"], section["device_val_top1"], section["geometry"], section["val_top1"]
                )
            )
        elif "val_top1" in section:
            lines.append("{}: {} (val top-1 {:.2%})".format(name, section["folder"], section["val_top1"]))
        else:
            lines.append("{}: {}".format(name, section["folder"]))
    return lines
