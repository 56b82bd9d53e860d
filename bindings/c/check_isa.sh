#!/usr/bin/env bash
# One build for every x86-64: the library's machine code uses AVX (VEX or EVEX encodings) or
# BMI/LZCNT/MOVBE only in code chosen at run time: the kernels built for x86-64-v3 (Swift
# module TidepoolKernelsAVX2) and the AVX-512 kernels of tidepool_vector.h. Anywhere else an
# AVX instruction would be a SIGILL on a CPU without it, e.g. a build-machine -target-cpu or a
# specialisation shared between the two kernel builds that the linker kept from the AVX2 one.
# It also checks that the AVX2 kernels are there (ymm code in TidepoolKernelsAVX2). tzcnt is
# allowed: compilers emit it for any x86-64 as `rep bsf`, which older CPUs run as bsf.
# Usage: check_isa.sh LIBRARY
set -euo pipefail
library=$1
[ "$(uname -m)" = x86_64 ] || { echo "check_isa: not x86-64, nothing to check"; exit 0; }
objdump -d --no-show-raw-insn "$library" | awk '
    /^[0-9a-f]+ <.*>:$/ { name = $2; next }
    NF >= 2 && $1 ~ /:$/ {
        op = $2
        extended = op ~ /^v/ || op ~ /^(shlx|shrx|sarx|rorx|andn|bzhi|pdep|pext|mulx|lzcnt|movbe|blsr|blsi|blsmsk)$/ \
            || $0 ~ /%[yz]mm/
        if (!extended) next
        if (name ~ /TidepoolKernelsAVX2/) { avx2++; if ($0 ~ /%ymm/) ymm++; next }
        if (name ~ /^<tpvector_/) { vector++; next }
        if (!(name in bad)) { bad[name] = $0; count++ }
    }
    END {
        for (n in bad) printf "AVX/BMI outside the run-time-chosen kernels: %s: %s\n", n, bad[n]
        printf "check_isa: %d AVX2-kernel instructions (%d on ymm), %d in tpvector_, %d other functions\n", avx2, ymm, vector, count
        if (count > 0 || ymm == 0) exit 1
    }'
