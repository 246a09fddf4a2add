#!/usr/bin/env bash
# SIP load benchmark: N concurrent SIPp calls (G.711 RTP) against a real `voicebot serve`.
# A thin wrapper: all the work and every option are in bench/sip_load.py (see its --help).
#   bench/sip_load.sh --quick                      # smoke run, < 1 min
#   bench/sip_load.sh --wait-load 1.0 --json /tmp/sip.json --results bench/RESULTS.md
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$repo"
exec "$python" "$repo/bench/sip_load.py" "$@"
