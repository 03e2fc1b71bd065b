# Shared by the one-shot device scripts (sourced, not run). See scripts/device/README.md.
#
# Sets: PY, LOG ($OUT/log.txt), T0, and the functions below. DRY_RUN=cpu means: no GPU,
# no CUDA build, the repo's .venv when there is one; everything else is the same code path.

DRY_RUN=${DRY_RUN:-}
: "${OUT:?OUT must name the output folder (the device sets it; for a dry run: OUT=/tmp/fake_out)}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
T0=$(date +%s)
export PYTHONUNBUFFERED=1
REPO=$(pwd)

if [ "$DRY_RUN" = cpu ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi

say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

# Seconds left of a TOTAL_S budget.
left() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }

# stage NAME SECONDS CMD...: run CMD with a hard time limit, its output in $LOGS/NAME.log;
# records rc and duration in log.txt. Never exits the script.
stage() {
    local name=$1 limit=$2; shift 2
    if [ "$limit" -le 5 ]; then
        say "stage $name skipped: only ${limit}s left for it"
        return 124
    fi
    local t=$(date +%s)
    say "stage $name: start (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    say "stage $name: rc=$rc after $(( $(date +%s) - t ))s$( [ $rc = 124 ] && echo ' (TIMED OUT)')"
    tail -n 15 "$LOGS/$name.log" | sed 's/^/    | /' >>"$LOG"
    return $rc
}

# Carried wheels (.whl/, scripts/device/fetch_wheels.sh) -> /tmp/site, first on PYTHONPATH.
install_wheels() {
    if [ "$DRY_RUN" = cpu ]; then
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
        say "dry run: wheels not installed, PYTHONPATH=$PYTHONPATH"
        return 0
    fi
    if [ -d /tmp/site/SimpleITK ]; then
        say "wheels already installed in /tmp/site (warm machine)"
    elif ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            >>"$LOG" 2>&1 || say "WARNING: wheel install failed"
    elif [ -f .whl/site.tar.xz ]; then
        # Python's tarfile reads xz itself: the image need not have the xz program.
        $PY -c "import tarfile; tarfile.open('.whl/site.tar.xz').extractall('/tmp/site', filter='data')" >>"$LOG" 2>&1 \
            || say "WARNING: site.tar.xz unpack failed"
    else
        say "WARNING: no .whl/ carried (run scripts/device/fetch_wheels.sh here and carry .whl)"
    fi
    export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    $PY -c "import SimpleITK, torch; print('SimpleITK', SimpleITK.Version_VersionString(), 'torch', torch.__version__)" \
        >>"$LOG" 2>&1 || say "WARNING: SimpleITK does not import: every stage reading or writing scans will fail"
}

machine_info() {
    {
        echo "== machine"
        date -u
        git log -1 --format='commit %H %s' 2>/dev/null || true
        lscpu 2>/dev/null | grep -m1 'Model name' || true
        echo "cores: $(getconf _NPROCESSORS_ONLN)"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
        $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    } >>"$LOG" 2>&1
}

# The compiled op with its CUDA kernel, in place (LesionDetectorLib/_C.cpython-312-*.so).
# A warm machine keeps it from an earlier call, so it is built only when missing.
op_devices() {
    $PY -c "from LesionDetectorLib.ops import _loader as l; s = l.load(); print('+'.join(s.devices) or 'none:' + s.reason)" 2>&1 | tail -n 1
}

build_op() {
    local limit=$1
    if [ "$DRY_RUN" = cpu ]; then
        say "dry run: CUDA op not built; op backend: $(op_devices)"
        return 0
    fi
    use_op_env
    if op_devices | grep -q cuda; then
        say "compiled op already has a CUDA kernel: not rebuilt"
        return 0
    fi
    # sm_90 only (the H200): building every arch torch knows triples the nvcc time.
    local t=$(date +%s)
    stage build_op "$limit" env USE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-4} \
        $PY setup.py build_ext --inplace
    if ! op_devices | grep -q cuda; then
        # setup.py swallows compiler errors (the install must not fail); the library's JIT build
        # is the second way, and later processes load it with LESION_DETECTOR_JIT=1 (use_op_env).
        stage build_op_jit $(( limit - ($(date +%s) - t) )) env LESION_DETECTOR_EXT_DIR=$JIT_DIR \
            TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-4} \
            $PY -c "from LesionDetectorLib.ops import _loader as l; s = l.build_jit(verbose=True); print(s); raise SystemExit('cuda' not in s.devices)" \
            && touch "$JIT_DIR.ok"
    fi
    use_op_env
    say "op backend after build: $(op_devices)"
}

# After build_op (also when it ran in a background subshell): use the JIT build if that is the one that worked.
JIT_DIR=/tmp/ld_ext
use_op_env() {
    if [ -f "$JIT_DIR.ok" ]; then
        export LESION_DETECTOR_JIT=1 LESION_DETECTOR_EXT_DIR=$JIT_DIR
    fi
}
