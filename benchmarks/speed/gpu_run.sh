#!/usr/bin/env bash
# The GPU measurement behind results/speed-gpu/: CUDA tests, then the speed suite on CUDA, in
# stages with their own time limits (a stage cut off loses only its own JSON), merged into one
# speed.json and tabled. Usage: bash benchmarks/speed/gpu_run.sh OUT_DIR [WHEEL_DIR]
# (WHEEL_DIR: wheels to install first, e.g. higher's, where the machine lacks them).
set -uo pipefail
out=${1:?usage: gpu_run.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheels"/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, jax; print('torch', torch.__version__, 'jax', jax.__version__, jax.devices())"
  nproc; } > "$out/machine.txt" 2>&1
timeout "${TEST_LIMIT:-100}" python3 -m pytest -q -p no:cacheprovider ${CUDA_TESTS:-tests} -k cuda -rs > "$out/cuda_tests.log" 2>&1
echo "cuda tests rc=$?" | tee -a "$out/cuda_tests.log"
export SPEED_DEVICE=${SPEED_DEVICE:-cuda} SPEED_PARTIAL=$out/partial.jsonl
SPEED_SECONDS=${PEER_SECONDS:-0.5} timeout "${PEER_LIMIT:-330}" python3 -m pytest -q -p no:cacheprovider \
    benchmarks/speed -k "${PEER_SELECT:-peers}" --benchmark-json="$out/peers.json" > "$out/speed.log" 2>&1
echo "peers rc=$?" | tee -a "$out/speed.log"
SPEED_SECONDS=${REST_SECONDS:-0.3} timeout "${REST_LIMIT:-140}" python3 -m pytest -q -p no:cacheprovider \
    benchmarks/speed -k "${REST_SELECT:-ensemble or finn or checkpoint}" --benchmark-json="$out/rest.json" >> "$out/speed.log" 2>&1
echo "rest rc=$?" | tee -a "$out/speed.log"
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
parts = []
for path in (out / "peers.json", out / "rest.json"):
    try:
        parts.append(json.loads(path.read_text()))
    except (OSError, ValueError) as error:  # a stage cut off by its limit leaves no (or an empty) file
        print(f"skipped {path.name}: {error}")
benchmarks = [b for p in parts for b in p["benchmarks"]]
names = {b["name"] for b in benchmarks}
partial = out / "partial.jsonl"  # what a stage cut off by its limit had finished
if partial.is_file():
    for line in partial.read_text().splitlines():
        record = json.loads(line)
        if not any(name.endswith(record["name"]) for name in names):
            benchmarks.append(record)
            print(f"from partial.jsonl: {record['name']}")
if benchmarks:
    merged = dict(parts[0] if parts else {"datetime": ""}, benchmarks=benchmarks)
    (out / "speed.json").write_text(json.dumps(merged, indent=1))
    for path in (out / "peers.json", out / "rest.json", partial):
        path.unlink(missing_ok=True)
EOF
python3 -m benchmarks.speed.table "$out/speed.json" "$out" 2>&1 | tail -3
tail -3 "$out/speed.log"
