#!/usr/bin/env bash
# One-shot GPU check (issue 14 item 5), within ~5 minutes on one H200: builds the compiled
# op with its CUDA kernel, runs the tests that exercise CUDA, and times detection of a
# 512x512x300 scan with the bundled model in fp16 autocast and fp32. Everything goes to
# $OUT/log.txt (stage logs in $OUT/logs.tar.gz). See scripts/device/README.md.
#
#   OUT=... bash scripts/device/cuda_tests_and_timing.sh
#   DRY_RUN=cpu OUT=/tmp/fake_out bash scripts/device/cuda_tests_and_timing.sh   # plumbing check here
set -u
cd "$(dirname "$0")/../.."
. scripts/device/common.sh

if [ "$DRY_RUN" = cpu ]; then
    TOTAL_S=${TOTAL_S:-900}; DEVICE=cpu; SLICES=${SLICES:-60}; REPEAT=1; PRECISIONS=${PRECISIONS:-fp32}
    WORK=${WORK:-/tmp/ld_dry_cuda}
else
    TOTAL_S=${TOTAL_S:-280}; DEVICE=cuda; SLICES=${SLICES:-300}; REPEAT=${REPEAT:-2}; PRECISIONS=${PRECISIONS:-fp16 fp32}
    WORK=${WORK:-/tmp/ld_cuda}
fi
# The op's tests run every case on "cuda" too when torch.cuda.is_available(); the two inference
# tests check the automatic device choice and a real network on it.
OP_TESTS=${OP_TESTS:-Testing/Lib/test_roi_align_3d.py}
INFERENCE_TESTS=${INFERENCE_TESTS:-Testing/Lib/test_inference_units.py::test_resolve_device Testing/Lib/test_inference_pipeline.py::test_real_network_from_pretrained_directory}
LOGS=$WORK/logs
rm -rf "$WORK"; mkdir -p "$LOGS"
trap 'say "done; total $(( $(date +%s) - T0 ))s"; tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs' EXIT

say "cuda_tests_and_timing: DRY_RUN=${DRY_RUN:-no} TOTAL_S=$TOTAL_S SLICES=$SLICES PRECISIONS=$PRECISIONS"
machine_info
install_wheels
build_op 150
say "op backend for $DEVICE: $($PY -c "from LesionDetectorLib.ops import _loader, backend_info; _loader.load(); print(backend_info('$DEVICE'))" 2>&1 | tail -n 1)"

# Time for the timing runs is kept back first: ~40 s each on the H200 (scan generation included).
N_BENCH=$(echo $PRECISIONS | wc -w)
PYTEST="$PY -m pytest -q -rs -p no:cacheprovider -o addopts="
stage tests_op $(( ($(left) - 40 * N_BENCH) * 2 / 3 )) $PYTEST $OP_TESTS
stage tests_inference $(( $(left) - 40 * N_BENCH )) $PYTEST $INFERENCE_TESTS
# Tests marked for a CUDA device (pyproject's "cuda" marker), if any exist by now.
MARKED=$(grep -rl "mark.cuda" Testing/Lib 2>/dev/null)
[ -n "$MARKED" ] && stage tests_marked_cuda $(( $(left) - 40 * N_BENCH )) $PYTEST -m cuda $MARKED

i=0
for precision in $PRECISIONS; do
    # Each timing run gets its share of what is left.
    stage "bench_$precision" $(( ($(left) - 5) / (N_BENCH - i) )) $PY benchmarks/bench_detect.py --device $DEVICE \
        --slices "$SLICES" --model luna16-synthetic --precision "$precision" --repeat "$REPEAT"
    cat "$LOGS/bench_$precision.log" >>"$LOG"
    i=$((i + 1))
done
