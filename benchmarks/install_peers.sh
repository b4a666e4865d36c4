#!/usr/bin/env bash
# Install the optional benchmark peers into the virtual environment of the given python.
#
#   bash benchmarks/install_peers.sh .venv/bin/python
#
# Idempotent: a peer that is already installed is left alone. Peers are never runtime
# dependencies of equicare. Every pip line that could pull torch pins torch==2.13.0 (the CPU build
# equicare is tested with), so no peer replaces it.
#
# * obp 0.5.7 declares Python < 3.11 and pins old scipy/torch: its sdist is built into a wheel and
#   installed with --no-deps --ignore-requires-python, then the few deps it imports.
# * scope-rl 0.2.1 pins versions that would downgrade our stack: --no-deps plus what it imports.
# * d3rlpy 2.8.1 pins gymnasium==1.0.0 (equicare's simulators use a newer gymnasium):
#   --no-deps plus its other deps.
# * stable-baselines3: plain install with the torch pin.
set -euo pipefail

PY="${1:?usage: bash benchmarks/install_peers.sh PATH/TO/venv/bin/python}"
TORCH="torch==2.13.0"
PIP=("$PY" -m pip install -q)

have() { "$PY" -m pip show -q "$1" >/dev/null 2>&1; }

if ! have d3rlpy; then
  "${PIP[@]}" --no-deps "d3rlpy==2.8.1"
  "${PIP[@]}" "$TORCH" "tqdm>=4.66.3" h5py "gym>=0.26.0" click typing-extensions structlog \
    colorama dataclasses-json
fi

if ! have stable-baselines3; then
  "${PIP[@]}" "$TORCH" stable-baselines3
fi

if ! have obp; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-deps --ignore-requires-python "obp==0.5.7" -d "$tmp"
  "$PY" -m pip wheel -q --no-deps --ignore-requires-python -w "$tmp" "$tmp"/obp-0.5.7*
  "${PIP[@]}" --no-deps --ignore-requires-python "$tmp"/obp-0.5.7-py3-none-any.whl
  "${PIP[@]}" "$TORCH" seaborn pyyaml mypy-extensions tqdm
fi

if ! have scope-rl; then
  "${PIP[@]}" --no-deps "scope-rl==0.2.1"
  "${PIP[@]}" "$TORCH" seaborn hydra-core "pytorch-revgrad==0.2.0" "gym>=0.26.2"
fi

echo "benchmark peers ready: d3rlpy, stable-baselines3, obp, scope-rl"
