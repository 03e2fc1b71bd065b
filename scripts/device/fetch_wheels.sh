#!/usr/bin/env bash
# Run HERE (not on the device), in the repo root, before a device call: puts into .whl/ the
# cp312 x86-64 wheels that the device image lacks and the library imports on the
# synth/train/detect/evaluate path. Only SimpleITK: numpy, scipy, torch, safetensors, tqdm and
# matplotlib are in the image; pydicom/highdicom are imported lazily (DICOM export only).
#
#   bash scripts/device/fetch_wheels.sh          # .whl/simpleitk-*.whl (52.8 MB)
#   bash scripts/device/fetch_wheels.sh --xz     # .whl/site.tar.xz instead (28.6 MB, ~2 min of xz)
#
# The working tree plus carried paths must stay under 64 MiB; the script prints the total
# and switches to --xz by itself when the wheel would leave under 4 MiB to spare.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SITK_VERSION=${SITK_VERSION:-2.5.7}
PIP=${PIP:-.venv/bin/python -m pip}
XZ=0
[ "${1:-}" = --xz ] && XZ=1

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >>.git/info/exclude; }
rm -rf .whl && mkdir -p .whl

# Wheels for Python 3.12 on manylinux x86-64 (the device's python3), whatever runs here.
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "SimpleITK==$SITK_VERSION"

tree_bytes() {
    # What travels: tracked files plus untracked files git does not ignore (README of the device tool).
    { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s 2>/dev/null \
        | awk '{s += $1} END {print s + 0}'
}
TREE=$(tree_bytes)
WHL=$(du -cb .whl/* | tail -n 1 | cut -f1)
LIMIT=$((64 * 1024 * 1024))
if [ $XZ = 0 ] && [ $((TREE + WHL)) -gt $((LIMIT - 4 * 1024 * 1024)) ]; then
    echo "tree $TREE + wheel $WHL bytes leaves under 4 MiB of the 64 MiB: packing as xz"
    XZ=1
fi
if [ $XZ = 1 ]; then
    # The unpacked wheel as one xz tarball (-6: 28.6 MB for SimpleITK 2.5.7, against 52.8 MB deflated);
    # common.sh's install_wheels unpacks it into /tmp/site, which is what pip --target does.
    tmp=$(mktemp -d)
    for w in .whl/*.whl; do (cd "$tmp" && unzip -q "$OLDPWD/$w"); done
    tar -C "$tmp" -cf - . | nice -n 15 xz -6 -T1 >.whl/site.tar.xz
    rm -rf "$tmp" .whl/*.whl
fi
WHL=$(du -cb .whl/* | tail -n 1 | cut -f1)
ls -la .whl
echo "travel size: tree $((TREE / 1048576)) MiB + .whl $((WHL / 1048576)) MiB = $(((TREE + WHL) / 1048576)) MiB of 64 MiB"
[ $((TREE + WHL)) -lt $LIMIT ] || { echo "ERROR: over the 64 MiB limit"; exit 1; }
