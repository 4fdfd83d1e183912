#!/usr/bin/env bash
# The FLUX.1 and SD3.5 figures the performance tables still want, side by side in one GPU
# call, each appended to $OUT/levers.jsonl as it is made (a call cut short keeps what it had):
#   1. FLUX.1-dev: plain diffusers, eager, at 1 and 4 images (the reference of this machine);
#   2. the worker, compiled, at 1 and 4 images (targets 3.5 s and 3.3 s per image);
#   3. the same with cpu_offload (what the text encoders' round trip costs, and its peak);
#   4. FP8 at 1 and 4 images (target 2.9 s; kept while 15 % faster than 2.);
#   5. SD3.5-large: the worker against plain diffusers (target 1.3x).
# Planned to fit one 10-minute device call (the earlier leases' start-ups and timings add to
# about 7 minutes); not yet run on a GPU. Needs diffusers, pyzmq, torchao and
# isal importable, and $OUT set:
#   PYTHONPATH=src:bench OUT=/tmp/suite bash bench/family_suite.sh [FIRST_STEP]
# Its plumbing on the CPU in about two minutes (without steps 3 and 4: offload and FP8 need a GPU):
#   FLUX=tiny-flux SD3=tiny-sd3 EXTRA="--device cpu --size 64 --steps 2" SKIP="3 4" ...
set -u
B="$(dirname "$0")/family_levers.py"
FLUX=${FLUX:-flux-random} SD3=${SD3:-sd3-random} EXTRA=${EXTRA:-} SKIP=" ${SKIP:-} "
# shellcheck disable=SC2086  # EXTRA is several arguments
run() { python3 "$B" "$@" $EXTRA --out "$OUT" 2>&1 | tee -a "$OUT/suite.log" | grep '^\[[0-9]' ; }
wants() { [ "$step" -le "$1" ] && [[ "$SKIP" != *" $1 "* ]]; }
step=${1:-1}
wants 1 && run diffusers --model "$FLUX" --images 1,4 --rounds 2
wants 2 && run runner --model "$FLUX" --setup '{"optimize":"compile","warmup":[1,4]}' --images 1,4 --rounds 2
wants 3 && run runner --model "$FLUX" --setup '{"optimize":"compile","warmup":[1],"cpu_offload":true}' --images 1 --rounds 2
wants 4 && run runner --model "$FLUX" --setup '{"optimize":"compile","warmup":[1,4],"quantize":"fp8"}' --images 1,4 --rounds 2
wants 5 && run runner --model "$SD3" --setup '{"optimize":"compile","warmup":[1]}' --images 1 --rounds 2
wants 5 && run diffusers --model "$SD3" --images 1 --rounds 2
exit 0
