#!/usr/bin/env bash
# Counts a suite's results from its TAP report and says what was skipped and
# why: "LABEL: P passed, F failed, S skipped", then "  N skipped: REASON" per
# reason (a skip reason's category is its text before the first ';').
# Appends "P F S" to $TAP_TOTALS when that is set, for the run's last line.
# Usage: tests/tap_summary.sh LABEL FILE.tap
set -uo pipefail
label=$1 file=$2
if [[ ! -s $file ]]; then
    echo "$label: no TAP report (the suite did not run)"
    [[ -n ${TAP_TOTALS:-} ]] && echo "0 1 0" >>"$TAP_TOTALS"
    exit 0
fi
# node's reporter closes with "# pass N" / "# fail N" / "# skipped N" for the
# top-level tests; Criterion's has one flat "ok"/"not ok" line per test.
read -r pass fail skip < <(awk '
    /^# pass [0-9]+$/      { np = $3; trailer = 1 }
    /^# fail [0-9]+$/      { nf += $3 }
    /^# cancelled [0-9]+$/ { nf += $3 }
    /^# skipped [0-9]+$/   { ns = $3 }
    /^ok /                 { if ($0 ~ /# SKIP/) s++; else p++ }
    /^not ok /             { f++ }
    END { if (trailer) print np + 0, nf + 0, ns + 0; else print p + 0, f + 0, s + 0 }' "$file")
echo "$label: $pass passed, $fail failed, $skip skipped"
grep -o '# SKIP.*' "$file" | sed -E 's/^# SKIP:? *//; s/;.*//' | sort | uniq -c |
    while read -r n reason; do echo "  $n skipped: ${reason:-no reason given}"; done
[[ -n ${TAP_TOTALS:-} ]] && echo "$pass $fail $skip" >>"$TAP_TOTALS"
exit 0
