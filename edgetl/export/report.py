"""The export report (``export_report.json``) as the terminal shows it. Reads reports of earlier
versions too (their INT8 artifacts name the form ``int8_target``)."""

from __future__ import annotations

from typing import Any, Dict

from edgetl.core.tables import text_table


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
    jetson = report.get("jetson_preprocessing")
    if jetson:
        lines.append(
            "jetson-inference preprocessing (stretched, no crop): val top-1 {:.2%} vs {:.2%} with the "
            "centre crop".format(jetson["stretched_val_top1"], jetson["center_crop_val_top1"])
        )
    if "engine" in report:
        lines.append("engine: {}".format(report["engine"].get("file") or report["engine"]["reason"]))
    lines += ["FAILED " + f for f in report["failures"]]
    return "\n".join(lines)
