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
    TOTAL_S=${TOTAL_S:-600}; DEVICE=cpu; SLICES=${SLICES:-60}; REPEAT=1; PRECISIONS=${PRECISIONS:-fp32}
    TEST_FILES=${TEST_FILES:-Testing/Lib/test_roi_align_3d.py}
    WORK=${WORK:-/tmp/ld_dry_cuda}
else
    TOTAL_S=${TOTAL_S:-280}; DEVICE=cuda; SLICES=${SLICES:-300}; REPEAT=${REPEAT:-3}; PRECISIONS=${PRECISIONS:-fp16 fp32}
    # The op's tests run every case on "cuda" when it is available; the inference tests check
    # the automatic device choice and the OOM fallback on it.
    TEST_FILES=${TEST_FILES:-Testing/Lib/test_roi_align_3d.py Testing/Lib/test_inference_units.py Testing/Lib/test_inference_pipeline.py}
    WORK=${WORK:-/tmp/ld_cuda}
fi
LOGS=$WORK/logs
rm -rf "$WORK"; mkdir -p "$LOGS"
trap 'say "done; total $(( $(date +%s) - T0 ))s"; tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs' EXIT

say "cuda_tests_and_timing: DRY_RUN=${DRY_RUN:-no} TOTAL_S=$TOTAL_S SLICES=$SLICES PRECISIONS=$PRECISIONS"
machine_info
install_wheels
build_op 150
say "op backend for $DEVICE: $($PY -c "from LesionDetectorLib.ops import _loader, backend_info; _loader.load(); print(backend_info('$DEVICE'))" 2>&1 | tail -n 1)"

# -m cuda selects tests marked for a CUDA device (pyproject's marker); the files above run
# their cuda parametrisations because torch.cuda.is_available() there.
stage tests $(( $(left) - 100 )) $PY -m pytest -q -rs -p no:cacheprovider -o addopts= $TEST_FILES
grep -E "passed|failed|error" "$LOGS/tests.log" | tail -n 3 >>"$LOG"
grep -rl "mark.cuda" Testing/Lib >/dev/null 2>&1 && \
    stage tests_marked_cuda 60 $PY -m pytest -q -rs -p no:cacheprovider -o addopts= -m cuda $(grep -rl "mark.cuda" Testing/Lib)

for precision in $PRECISIONS; do
    stage "bench_$precision" $(( $(left) - 5 )) $PY benchmarks/bench_detect.py --device $DEVICE --slices "$SLICES" \
        --model luna16-synthetic --precision "$precision" --repeat "$REPEAT"
    cat "$LOGS/bench_$precision.log" >>"$LOG"
done
