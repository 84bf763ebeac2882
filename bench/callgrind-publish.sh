#!/usr/bin/env bash
# Instructions per HTTP publish (issue 7): bench/callgrind.sh in its publish mode.
# env: CGP_CONNS=16  CGP_SECONDS=5  CGP_SIZE=128  CGP_ARGS="--data-dir DIR --fsync batch"
exec env CG_MODE=publish CG_PORT="${CG_PORT:-18398}" "$(dirname "$0")/callgrind.sh" "$@"
