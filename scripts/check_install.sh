#!/usr/bin/env bash
# `make install-check`: `pip install -e .` and `pip install .` work in fresh virtual environments,
# and the installed `metabench` command runs from another folder (where the checkout is not on
# sys.path): it lists the registries, trains a tiny sweep from the packaged smoke.toml and checks it
# with `regress` (packaged tolerances.toml).
#
# No download: each fresh environment sees PYTHON's packages (torch alone is 5 GB) through a .pth
# file naming its site-packages (`--system-site-packages` would give the base interpreter's, not
# the virtual environment's), and pip installs with --no-index --no-build-isolation, so a declared
# dependency (or extra) that the pinned environment does not satisfy fails here instead of
# downloading. The source is a copy of the checkout without results/, so the build leaves nothing
# in the working tree.
# Usage: check_install.sh PYTHON (the project's .venv/bin/python)
set -euo pipefail
case $1 in /*) python=$1 ;; *) python=$PWD/$1 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

mkdir "$work/src" "$work/elsewhere"
tar -C "$root" --exclude=./results --exclude=./.venv --exclude=./.cache --exclude=./.git --exclude=./runs \
  --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -

for mode in editable regular; do
  venv=$work/venv-$mode
  "$python" -m venv --without-pip "$venv"  # pip comes from PYTHON's packages, through the .pth file
  echo "$site" > "$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_metabench_deps.pth"
  if [ $mode = editable ]; then
    target=(-e "$work/src")
  else
    target=("$work/src[higher,jax,ray,l2l,test]")
  fi
  "$venv/bin/python" -m pip install -q --no-index --no-build-isolation "${target[@]}"
  cd "$work/elsewhere"
  where=$("$venv/bin/python" -c "import metabench; print(metabench.__file__)")
  case $mode:$where in
    editable:"$work/src/"*|regular:"$venv/"*) ;;
    *) echo "install-check: $mode install imports metabench from $where" >&2; exit 1 ;;
  esac
  listing=$("$venv/bin/metabench" list)
  grep -q "maml:" <<< "$listing" || { echo "install-check: $mode: metabench list printed: $listing" >&2; exit 1; }
  echo "install-check: pip install $([ $mode = editable ] && echo "-e ").: metabench $("$venv/bin/python" -c "import metabench; print(metabench.__version__)") from $where"
done

# The regular install's packaged data: a tiny sweep from smoke.toml, checked against itself.
configs=$("$venv/bin/python" -c "import importlib.resources as r; print(r.files('benchmarks') / 'configs')")
if ! "$venv/bin/metabench" run --config "$configs/smoke.toml" --out tiny --set 'algorithm="maml"' --set iterations=5 \
    --set n_test_tasks=10 --set n_validation_tasks=10 --set eval_every=0 --threads 1 > run.out 2> run.err; then
  cat run.out run.err >&2
  exit 1
fi
grep "^report: " run.out
"$venv/bin/metabench" regress --baseline tiny --candidate tiny > /dev/null
echo "install-check: the installed metabench ran a sweep and regress from $work/elsewhere"
