#!/usr/bin/env bash
# Build BrainFlow's native libraries from source on this machine and install them where the
# brainflow Python package loads them from (its brainflow/lib directory).
#
# Why: the brainflow wheel on PyPI ships x86-64 Linux libraries only, so on a Raspberry Pi
# (aarch64, or armv7l) every board fails with "cannot open shared object file" or "wrong ELF
# class". edgetwin's daemon notices that at start ("BrainFlow's native library is missing for
# this CPU") and keeps its other sources running; this script is the fix.
#
# Usage: scripts/build-brainflow-arm.sh [--python PY] [--src DIR] [--jobs N] [--no-ble]
#                                       [--no-apt] [--dry-run]
#   --python PY  the interpreter whose brainflow to fix (default: .venv/bin/python, else python3)
#   --src DIR    where to clone and build (default: ~/.cache/edgetwin/brainflow-src)
#   --jobs N     parallel compile jobs (default: 2 when RAM < 3 GiB, else the CPU count)
#   --no-ble     skip BrainFlow's BLE support (SimpleBLE; needs libdbus-1-dev)
#   --no-apt     do not install build dependencies with apt-get
#   --dry-run    print what would run, change nothing
#
# Steps (BrainFlow's "Compilation of Core Module" docs, done with cmake directly):
#   1. the tag that matches the installed brainflow version (importlib.metadata), so the
#      ctypes signatures of the Python package and the C ABI agree;
#   2. cmake -DCMAKE_BUILD_TYPE=Release -DBUILD_BLE=ON -DBUILD_BLUETOOTH=ON, build, install;
#   3. copy the resulting lib*.so into site-packages/brainflow/lib (the x86-64 originals are
#      kept in lib.orig-<arch>), then open BrainFlow's synthetic board as a check.
# Untested on a real Pi from this repository's CI (no ARM machine there); see the README.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=""
src="${XDG_CACHE_HOME:-$HOME/.cache}/edgetwin/brainflow-src"
jobs=""
ble=ON
use_apt=1
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --src) src=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --no-ble) ble=OFF; shift ;;
    --no-apt) use_apt=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "build-brainflow-arm: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

run() {
  echo "+ $*"
  if [ "$dry" = 0 ]; then "$@"; fi
}

version=$("$python" -c 'import importlib.metadata as m; print(m.version("brainflow"))') || {
  echo "build-brainflow-arm: $python has no brainflow; run scripts/bootstrap first" >&2; exit 1; }
# importing brainflow loads no native code, so this works before the libraries exist
pkg_dir=$("$python" -c 'import brainflow, os; print(os.path.dirname(brainflow.__file__))')
arch=$(uname -m)
echo "build-brainflow-arm: brainflow $version for $arch into $pkg_dir/lib"

if [ -z "$jobs" ]; then
  mem_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
  if [ "${mem_kib:-0}" -lt 3145728 ]; then jobs=2; else jobs=$(nproc 2>/dev/null || echo 2); fi
fi

if [ "$use_apt" = 1 ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  deps=(git cmake build-essential pkg-config libbluetooth-dev)
  [ "$ble" = ON ] && deps+=(libdbus-1-dev)
  missing=()
  for pkg in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    run $sudo_cmd apt-get update
    run $sudo_cmd apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

if [ -d "$src/.git" ]; then
  run git -C "$src" fetch --depth 1 origin "refs/tags/$version:refs/tags/$version"
  run git -C "$src" checkout --force "$version"
else
  run mkdir -p "$(dirname "$src")"
  run git clone --depth 1 --branch "$version" https://github.com/brainflow-dev/brainflow.git "$src"
fi

build="$src/build-$arch"
installed="$src/installed-$arch"
run cmake -S "$src" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$installed" \
  -DBUILD_BLE="$ble" \
  -DBUILD_BLUETOOTH=ON \
  -DBUILD_ONNX=OFF
run cmake --build "$build" --parallel "$jobs"
run cmake --install "$build"

if [ "$dry" = 0 ]; then
  libs=("$installed"/lib/*.so)
  if [ ! -e "${libs[0]}" ]; then
    # BrainFlow's post-build step also copies every library into its python_package tree.
    libs=("$src"/python_package/brainflow/lib/*.so)
  fi
  if [ ! -e "${libs[0]}" ]; then
    echo "build-brainflow-arm: the build produced no lib*.so; see the cmake output above" >&2
    exit 1
  fi
else
  libs=("$installed/lib/libBoardController.so" "$installed/lib/libDataHandler.so" "...")
fi

backup="$pkg_dir/lib.orig-x86_64"
if [ ! -d "$backup" ]; then
  run mkdir -p "$backup"
  run cp -a "$pkg_dir/lib/." "$backup/"
fi
run cp -f "${libs[@]}" "$pkg_dir/lib/"

echo "build-brainflow-arm: checking BrainFlow's synthetic board"
check='
import warnings
warnings.simplefilter("ignore")
from brainflow.board_shim import BoardShim, BoardIds, BrainFlowInputParams
b = BoardShim(BoardIds.SYNTHETIC_BOARD, BrainFlowInputParams())
b.prepare_session(); b.start_stream(); import time; time.sleep(0.5)
n = b.get_board_data().shape[1]; b.release_session()
print("synthetic board ok:", n, "samples")
'
run "$python" -c "$check"
echo "build-brainflow-arm: done; restart the edgetwin daemon"
