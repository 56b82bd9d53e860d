#!/usr/bin/env bash
# Every function include/tidepool.h declares is exported by libtidepool.so, and every
# exported tp_ symbol is declared there.
set -euo pipefail
header=${1:?header}
library=${2:?library}
declared=$(grep -E '^[A-Za-z].*\btp_[a-z_0-9]+\(' "$header" | sed -E 's/.*\b(tp_[a-z_0-9]+)\(.*/\1/' | sort -u)
exported=$(nm -D --defined-only "$library" | awk '$3 ~ /^tp_/ {print $3}' | sort -u)
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
undeclared=$(comm -13 <(echo "$declared") <(echo "$exported"))
[ -z "$missing" ] || echo "declared in the header but not exported: $missing"
[ -z "$undeclared" ] || echo "exported but not declared in the header: $undeclared"
count=$(echo "$declared" | wc -l)
if [ -z "$missing" ] && [ -z "$undeclared" ] && [ "$count" -gt 10 ]; then
    echo "check_symbols: $count functions declared and exported"
else
    exit 1
fi
