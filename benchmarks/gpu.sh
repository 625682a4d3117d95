#!/usr/bin/env bash
# Run the benchmarks on a bare CUDA machine: venv, offline install, `audit bench --device cuda`.
#
#   benchmarks/gpu.sh              full run on CUDA: every benchmark with the bundled MiniLM, then
#                                  extraction + padding with a random-weight gpt2-medium
#   benchmarks/gpu.sh --quick      CI-sized sizes
#   benchmarks/gpu.sh --dry-run    print every step, run none
#
# The machine needs Python >= 3.11 with a CUDA build of PyTorch; the venv is made with
# --system-site-packages so that torch is reused, not downloaded. Everything else installs from
# wheels in benchmarks/wheels/ (no network needed), or from the package index when that folder is
# empty. Build the wheel folder on a networked machine with the GPU machine's Python version:
#
#   pip download -d benchmarks/wheels --python-version 3.11 --platform manylinux2014_x86_64 \
#       --only-binary=:all: --no-deps -r <(pip freeze --exclude-editable | grep -v '^torch==')
#   pip download -d benchmarks/wheels --no-deps -r requirements-data.txt
#
# (or `pip wheel -w benchmarks/wheels . -r requirements-data.txt` on a machine like the target).
#
# Settings (environment):
#   PYTHON                interpreter to build the venv from (default python3)
#   AUDIT_BENCH_VENV      venv folder (default .venv-gpu); an existing venv that can already
#                         import `audit` is reused as is, without installing anything
#   AUDIT_BENCH_DEVICE    cuda (default) or cpu (a smoke run of the same steps, no GPU needed)
#   AUDIT_BENCH_ONLY      space-separated benchmarks for the MiniLM run (default: all; "none"
#                         skips that run)
#   AUDIT_BENCH_LARGE     backbone of the second run (default random:gpt2-medium; "none" skips it)
#   AUDIT_BENCH_OUT       report folder (default reports/bench)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
quick=""
dry_run=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick="--quick" ;;
        --dry-run) dry_run=1 ;;
        -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $arg (expected --quick, --dry-run)" >&2; exit 2 ;;
    esac
done

python="${PYTHON:-python3}"
venv="${AUDIT_BENCH_VENV:-$root/.venv-gpu}"
device="${AUDIT_BENCH_DEVICE:-cuda}"
large="${AUDIT_BENCH_LARGE:-random:gpt2-medium}"
out="${AUDIT_BENCH_OUT:-$root/reports/bench}"
wheels="$here/wheels"

run() {
    echo "+ $*"
    if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import audit" 2>/dev/null; then
    echo "reusing $venv (it imports audit already)"
else
    run "$python" -m venv --system-site-packages "$venv"
    pip=("$venv/bin/python" -m pip install --quiet)
    if compgen -G "$wheels/*.whl" >/dev/null; then
        echo "installing from $wheels (offline)"
        run "${pip[@]}" --no-index --find-links "$wheels" --no-deps -r "$root/requirements-data.txt"
        run "${pip[@]}" --no-index --find-links "$wheels" -e "$root"
    else
        echo "no wheels in $wheels: installing from the package index"
        run "${pip[@]}" --no-deps -r "$root/requirements-data.txt"
        run "${pip[@]}" -e "$root"
    fi
fi
py="$venv/bin/python"

echo "checking device $device"
if [ "$device" = "cuda" ]; then
    run "$py" -c "import sys, torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'NOT AVAILABLE'); sys.exit(0 if ok else 1)" \
        || { echo "gpu.sh: torch.cuda.is_available() is False: install a CUDA build of torch, or set AUDIT_BENCH_DEVICE=cpu for a smoke run" >&2; exit 1; }
fi

only=()
for name in ${AUDIT_BENCH_ONLY:-}; do only+=(--only "$name"); done
if [ "${AUDIT_BENCH_ONLY:-}" != "none" ]; then
    run "$py" -m audit.cli bench $quick --device "$device" --out "$out" "${only[@]}"
fi
if [ "$large" != "none" ]; then
    run "$py" -m audit.cli bench $quick --device "$device" --out "$out" \
        --backbone "$large" --only extraction --only padding
fi
if [ "$dry_run" -eq 0 ]; then
    latest="$(ls -td "$out"/*/ 2>/dev/null | head -n 2 | tr '\n' ' ')"
    echo "reports (bench.json + bench.md): $latest"
fi
