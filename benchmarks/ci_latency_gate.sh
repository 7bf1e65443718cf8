#!/usr/bin/env bash
# Quick latency gate run by .ci/run: fine-tune MobileNetV2 (feature extractor, 1 epoch, demo data),
# export it through the parity gate, and compare its ONNX Runtime latency with the committed
# baseline. Times are relative to a reference workload timed alongside (see edgetl/bench/latency.py),
# so a slower shared CI machine does not fail the gate; a slower model does.
#   benchmarks/ci_latency_gate.sh           # gate against benchmarks/baselines/latency-ci.json
#   benchmarks/ci_latency_gate.sh --record  # write a new baseline (commit it)
set -euo pipefail
cd "$(dirname "$0")/.."
edgetl=${EDGETL:-.venv/bin/edgetl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run="$work/ci-latency-mobilenet_v2"
"$edgetl" -q finetune --epochs 1 --warmup-epochs 0 --out "$run" >/dev/null
"$edgetl" -q export "$run" >/dev/null
args=(bench latency "$run" --backend onnx --batch 1 --threads 1 --warmup 10 --iters 60 --rounds 6)
baseline=benchmarks/baselines/latency-ci.json
if [ "${1:-}" = "--record" ]; then
  "$edgetl" "${args[@]}" --json-out "$baseline"
else
  "$edgetl" "${args[@]}" --baseline "$baseline" --max-regression "${MAX_REGRESSION:-25}"
fi
