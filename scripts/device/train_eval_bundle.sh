#!/usr/bin/env bash
# One-shot GPU run (issue 13 item 9): synthetic data on all cores, training on the GPU,
# calibration + held-out evaluation + bundling, everything left in $OUT. About 9 minutes on
# one H200 with 16 cores; each stage is time-boxed from TOTAL_S so partial results always
# come back. How to call it and fold the results in: scripts/device/README.md.
#
#   OUT=... bash scripts/device/train_eval_bundle.sh              # on the device
#   DRY_RUN=cpu OUT=/tmp/fake_out bash scripts/device/train_eval_bundle.sh   # plumbing check here
#
# Knobs (environment): TOTAL_S (550), TRAIN_MIN (3), FPRN_MIN (0: no FPRN phase), N_TRAIN (48),
# N_VAL (8), N_TEST (24), BATCH (8), ITERS (100), PRESET (luna16), CROP (128), VERSION (1.3.0), MAX_TILE (192: the card's inference.max_tile),
# FROM (start; "bundle" reuses $WORK of an earlier call on the same machine and only bundles).
set -u
cd "$(dirname "$0")/../.."
. scripts/device/common.sh

if [ "$DRY_RUN" = cpu ]; then
    # Every stage, shrunk: tiny scans, the tiny network, a minute of CPU training.
    TOTAL_S=${TOTAL_S:-900}; TRAIN_MIN=${TRAIN_MIN:-1}; FPRN_MIN=${FPRN_MIN:-0.5}
    N_TRAIN=${N_TRAIN:-3}; N_VAL=${N_VAL:-2}; N_TEST=${N_TEST:-2}; SIZE=small
    BATCH=${BATCH:-1}; ITERS=${ITERS:-4}; PRESET=${PRESET:-tiny}; CROP=${CROP:-64}
    DEVICE=cpu; CORES=2; LOADER_WORKERS=0; FPRN_SCANS=2
    WORK=${WORK:-/tmp/ld_dry_work}
else
    TOTAL_S=${TOTAL_S:-550}; TRAIN_MIN=${TRAIN_MIN:-3}; FPRN_MIN=${FPRN_MIN:-0}
    N_TRAIN=${N_TRAIN:-48}; N_VAL=${N_VAL:-8}; N_TEST=${N_TEST:-24}; SIZE=full
    BATCH=${BATCH:-8}; ITERS=${ITERS:-100}; PRESET=${PRESET:-luna16}; CROP=${CROP:-128}
    DEVICE=cuda; CORES=$(getconf _NPROCESSORS_ONLN); LOADER_WORKERS=${LOADER_WORKERS:-8}; FPRN_SCANS=${FPRN_SCANS:-32}
    WORK=${WORK:-/tmp/ld_work}
    export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
fi
VERSION=${VERSION:-1.3.0}
MAX_TILE=${MAX_TILE:-192}
# Seeds of the project's sets (docs/benchmarks.md): train 101, validation 202, test 303.
SEED_TRAIN=101; SEED_VAL=202; SEED_TEST=303
DATA=$WORK/data; RUN=$WORK/run; FPRN=$WORK/fprn; BUNDLE=$WORK/bundle/luna16-synthetic; REPORT=$WORK/report
LOGS=$WORK/logs
FROM=${FROM:-start}
[ "$FROM" = bundle ] || rm -rf "$WORK"
mkdir -p "$DATA" "$LOGS"

# Whatever happened, pack what exists into $OUT (at most 8 files, each < 16 MiB).
pack() {
    say "packing results into $OUT"
    # A card without test results (the bundle stage stopped early) comes back as model_untested/.
    local m=model; grep -q '"test":' "$BUNDLE/model.json" 2>/dev/null || m=model_untested
    [ -f "$BUNDLE/model.safetensors" ] && mkdir -p "$OUT/$m" && cp "$BUNDLE"/model.safetensors "$BUNDLE"/model.json "$OUT/$m/"
    [ -d "$REPORT" ] && tar -C "$WORK" -czf "$OUT/report.tar.gz" \
        --exclude='report/predictions' report 2>/dev/null
    # The raw training run(s): weights + card + logs (checkpoints only when small enough).
    local runs=(); for d in run fprn; do [ -d "$WORK/$d/model" ] && runs+=("$d/model"); \
        [ -f "$WORK/$d/train_log.jsonl" ] && runs+=("$d/train_log.jsonl"); \
        [ -f "$WORK/$d/fprn_phase_log.json" ] && runs+=("$d/fprn_phase_log.json"); done
    [ ${#runs[@]} -gt 0 ] && tar -C "$WORK" -czf "$OUT/runs.tar.gz" "${runs[@]}"
    [ -d "$RUN/checkpoint" ] && tar -C "$WORK" -czf "$OUT/checkpoint.tar.gz" run/checkpoint
    [ -f "$OUT/checkpoint.tar.gz" ] && [ "$(stat -c %s "$OUT/checkpoint.tar.gz")" -gt 15000000 ] && rm -f "$OUT/checkpoint.tar.gz"
    cp "$DATA"/*.json "$LOGS/" 2>/dev/null
    tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
    say "done; total $(( $(date +%s) - T0 ))s"
    ls -la "$OUT" "$OUT/$m" 2>/dev/null >>"$LOG"
}
trap pack EXIT
trap 'say "terminated"; exit 143' TERM INT

say "train_eval_bundle: DRY_RUN=${DRY_RUN:-no} TOTAL_S=$TOTAL_S TRAIN_MIN=$TRAIN_MIN FPRN_MIN=$FPRN_MIN" \
    "N_TRAIN=$N_TRAIN N_VAL=$N_VAL N_TEST=$N_TEST BATCH=$BATCH ITERS=$ITERS PRESET=$PRESET CROP=$CROP"
machine_info
install_wheels

if [ "$FROM" = start ]; then
# 1. The CUDA op builds (a few cores) while training and validation data are generated (the rest).
build_op 240 & BUILD_PID=$!
SYNTH_WORKERS=$(( CORES > 6 ? CORES - 4 : CORES ))
stage synth_train $(( $(left) - 300 )) $PY scripts/device/synth_parallel.py --n "$N_TRAIN" --seed $SEED_TRAIN \
    --out "$DATA/train" --size $SIZE --subsets 16 --workers $SYNTH_WORKERS $( [ "$DRY_RUN" = cpu ] && echo --check )
tail -n 1 "$LOGS/synth_train.log" >"$DATA/synth_train.json"
stage synth_val 120 $PY scripts/device/synth_parallel.py --n "$N_VAL" --seed $SEED_VAL --out "$DATA/val" \
    --size $SIZE --subsets "$N_VAL" --workers $SYNTH_WORKERS
tail -n 1 "$LOGS/synth_val.log" >"$DATA/synth_val.json"

# 2. The test set (only needed for the last stage) is generated beside the cache and the training run.
# Measured on the shared 2-core CPU, one thread: a full-size scan takes ~10 s to generate and
# write, ~14 s to cache (0.8 / 1.4 GB peak RSS per worker).
( stage synth_test 300 $PY scripts/device/synth_parallel.py --n "$N_TEST" --seed $SEED_TEST --out "$DATA/test" \
    --size $SIZE --workers $(( CORES > 8 ? 4 : 1 )); tail -n 1 "$LOGS/synth_test.log" >"$DATA/synth_test.json" ) &
TEST_PID=$!

stage cache 120 $PY scripts/device/cache_parallel.py --cache "$RUN/cache" --data "$DATA/train" "$DATA/val" \
    --workers $(( CORES > 8 ? CORES - 4 : CORES ))
wait $BUILD_PID
use_op_env
say "op backend: $(op_devices)"

# 3. Joint training from scratch (the paper's schedule: RPN first, then RPN + FPRN) for TRAIN_MIN.
train() {
    stage "train_b$1" $(( $(left) - 150 )) $PY -m LesionDetectorLib train --data "$DATA/train" --val-data "$DATA/val" \
        --out "$RUN" --cache "$RUN/cache" --preset "$PRESET" --crop "$CROP" --batch-size "$1" --epochs 1000 \
        --iters "$ITERS" --time-budget-min "$TRAIN_MIN" --device $DEVICE --workers $LOADER_WORKERS --threads 4 \
        --seed 7 --no-progress
}
train "$BATCH"
if [ ! -f "$RUN/model/model.safetensors" ] && grep -q "OutOfMemoryError\|out of memory" "$LOGS/train_b$BATCH.log"; then
    rm -rf "$RUN/checkpoint" "$RUN/train_log.jsonl"
    train $(( BATCH / 2 > 0 ? BATCH / 2 : 1 ))
fi
fi
MODEL=$RUN/model
[ -f "$FPRN/model/model.safetensors" ] && [ "$FROM" = bundle ] && MODEL=$FPRN/model

# 4. Optional FPRN phase on the frozen backbone (train --fprn-phase), kept only when it ran to the end.
if [ "$FROM" = start ] && [ -f "$MODEL/model.safetensors" ] && awk "BEGIN {exit !($FPRN_MIN > 0)}"; then
    if stage fprn_phase $(( $(left) - 150 )) $PY -m LesionDetectorLib train --fprn-phase --init "$MODEL" \
        --data "$DATA/train" --val-data "$DATA/val" --out "$FPRN" --cache "$RUN/cache" --device $DEVICE \
        --epochs 4 --fprn-scans "$FPRN_SCANS" --time-budget-min "$FPRN_MIN" --seed 7 --no-progress \
        && [ -f "$FPRN/model/model.safetensors" ]; then
        MODEL=$FPRN/model
    fi
fi

# 5. Calibrate on validation, evaluate on the held-out test set, write the bundled model.
[ "$FROM" = start ] && wait $TEST_PID
use_op_env
bundle() {
    stage "$1" $(( $(left) - 15 )) $PY scripts/build_bundled_model.py --run "$MODEL" --val "$DATA/val" \
        --test "$DATA/test" --out "$BUNDLE" --report "$REPORT" --work "$WORK/bundle-eval" --device $DEVICE \
        --tile 128 --max-tile "$MAX_TILE" --version "$VERSION" --fusions $2 \
        --data-note "lesion-detector synth (scripts/device/synth_parallel.py): $N_TRAIN training scans (seed $SEED_TRAIN), $N_VAL validation scans (seed $SEED_VAL), $N_TEST test scans (seed $SEED_TEST), size $SIZE" \
        --training-note "script=scripts/device/train_eval_bundle.sh TRAIN_MIN=$TRAIN_MIN FPRN_MIN=$FPRN_MIN BATCH=$BATCH ITERS=$ITERS PRESET=$PRESET CROP=$CROP"
}
if [ -f "$MODEL/model.safetensors" ] && [ -f "$DATA/test/seriesuids.csv" ]; then
    say "bundling $MODEL"
    # calibrate() gives up when one candidate fusion cannot be fitted (the logistic one on marks
    # that are all hits or all misses, as an undertrained model gives): then without it.
    if ! bundle bundle "${FUSIONS:-mean fprn geometric logistic}" && grep -q "no fusion can be fitted" "$LOGS/bundle.log"; then
        rm -rf "$BUNDLE" "$REPORT"
        bundle bundle_no_logistic "mean fprn geometric"
    fi
else
    say "bundle skipped: no trained model or no test set"
fi
