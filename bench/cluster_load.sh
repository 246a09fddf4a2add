#!/usr/bin/env bash
# SIP load over 1, 2, 3 gateway processes behind Kamailio's dispatcher (issue 15 item 6).
# A thin wrapper: all the work and every option are in bench/cluster_load.py (see its --help).
#   bench/cluster_load.sh --quick                  # smoke run, K = 1, 2 x N = 10, < 2 min
#   bench/cluster_load.sh --wait-load 1.0 --json /tmp/cluster.json --results bench/RESULTS.md
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$repo"
exec "$python" "$repo/bench/cluster_load.py" "$@"
