#!/usr/bin/env bash
# Every benchmark, then one table of their headline figures: builds lattice (release) and the
# bench targets once, runs each bench script with BENCH_LATTICE, HYPER_BENCH, ROUTER_BENCH and
# NATS_RTT_BENCH set (so none rebuilds: bench/http.sh, bench/density.sh and bench/lattice.sh take
# the bench targets from them), and prints the `result|NAME|OURS|PEER|UNIT|RATIO|TARGET` lines
# they printed as one table, with PASS or FAIL where the target is numeric: `>=1.2x …`/`<=0.8x …`
# are checked against RATIO, `<60 s`-style targets against OURS. Each script's full output is
# kept in bench/.cache/all/.
# Exits non-zero if a script failed (a non-2xx answer, a failed check), is missing, or printed
# no result| line; a failed script's figures do not enter the table (a FAILED-RUN row stands
# for it). A target not met is marked FAIL in the table and counted, not an error of the run;
# a numeric target with no figure to check (`-`) is a FAIL too.
#
#   bench/all.sh [SCRIPT...]      (default: every bench/*.sh; env ROUNDS is passed as the
#                                  rounds argument to each script that takes one, i.e. all but
#                                  those in NO_ROUNDS; DURATION etc. pass through)
set -uo pipefail
cd "$(dirname "$0")/.."

# The issue's order first, then any other script found.
ORDER=(http lattice cold-start failover bodies density keyvalue reconcile observability slow-start idle-manifest)
if [ $# -gt 0 ]; then
  WANT=("$@")
else
  WANT=("${ORDER[@]}")
  for f in bench/*.sh; do
    s=$(basename "$f" .sh)
    case " lib all ${ORDER[*]} " in *" $s "*) ;; *) WANT+=("$s") ;; esac
  done
fi

# Scripts whose first argument is not a round count (idle-manifest's is a lattice binary).
NO_ROUNDS=" idle-manifest "

OUT=bench/.cache/all
mkdir -p "$OUT"
. bench/lib.sh
echo "building lattice (release) and the bench targets once" >&2
# The bench targets first: building router_lookup also relinks target/release/lattice with the
# dev-dependencies' features (bench_target puts the release build back); the release build after
# it makes sure the shipped binary is in place, and the scripts run a copy of it. The hyper
# baseline is a crate of its own (bench/hyper-baseline), without those features.
HYPER_BENCH=$(bench_hyper) && ROUTER_BENCH=$(bench_target router_lookup) \
  && NATS_RTT_BENCH=$(bench_target nats_rtt) \
  || { echo "building the bench targets failed" >&2; exit 1; }
export HYPER_BENCH ROUTER_BENCH NATS_RTT_BENCH
cargo build --release --quiet || { echo "building lattice failed" >&2; exit 1; }
cp target/release/lattice "$OUT/lattice"
export BENCH_LATTICE=$PWD/$OUT/lattice
"$BENCH_LATTICE" --version >&2 || true

RAN=(); MISSING=(); FAILED=()
: > "$OUT/results"
for s in "${WANT[@]}"; do
  if [ ! -f "bench/$s.sh" ]; then MISSING+=("$s"); continue; fi
  echo "=== bench/$s.sh ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  args=()
  case $NO_ROUNDS in *" $s "*) ;; *) args=(${ROUNDS:+"$ROUNDS"}) ;; esac
  bash "bench/$s.sh" ${args[@]+"${args[@]}"} 2>&1 | tee "$OUT/$s.log" >&2
  rc=${PIPESTATUS[0]}
  RAN+=("$s")
  n=$(grep -c '^result|' "$OUT/$s.log" || true)
  if [ "$rc" != 0 ]; then
    FAILED+=("$s (exit $rc)")
    # Figures of a run that failed are not figures: one row says so instead.
    echo "$s|FAILED-RUN (exit $rc)|-|-|-|-|run failed" >> "$OUT/results"
  elif [ "$n" = 0 ]; then
    FAILED+=("$s (no result line)")
    echo "$s|FAILED-RUN (no result line)|-|-|-|-|run failed" >> "$OUT/results"
  else
    grep '^result|' "$OUT/$s.log" | sed "s/^result|/$s|/" >> "$OUT/results"
  fi
done

# One table; the marker compares RATIO (targets with an `x`) or OURS with the target's number.
echo
echo "bench/all.sh on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
awk -F'|' -v failed_file="$OUT/targets-failed" '
  function check(target, ours, ratio,    op, num, v) {
    if (!match(target, /^ *(>=|<=|<|>) *[0-9.]+ *x?/)) return "-"
    spec = substr(target, RSTART, RLENGTH); gsub(/ /, "", spec)
    op = (substr(spec, 2, 1) == "=") ? substr(spec, 1, 2) : substr(spec, 1, 1)
    num = substr(spec, length(op) + 1); sub(/x$/, "", num)
    v = (spec ~ /x$/) ? ratio : ours
    if (v == "-" || v == "") return "FAIL"
    if (op == ">=") return (v + 0 >= num + 0) ? "PASS" : "FAIL"
    if (op == "<=") return (v + 0 <= num + 0) ? "PASS" : "FAIL"
    if (op == ">") return (v + 0 > num + 0) ? "PASS" : "FAIL"
    return (v + 0 < num + 0) ? "PASS" : "FAIL"
  }
  BEGIN { fmt = "%-13s %-44s %10s %10s %-6s %6s  %-32s %s\n"; printf fmt, "script", "figure", "ours", "peer", "unit", "ratio", "target", "" }
  { m = check($7, $3, $6); if (m == "FAIL") failed++; printf fmt, $1, $2, $3, $4, $5, $6, $7, m }
  END { print failed + 0 > failed_file }' "$OUT/results" | tee "$OUT/table"
echo "ran: ${RAN[*]:-none}"
[ "${#MISSING[@]}" = 0 ] || echo "FAILED: missing (no such script in bench/): ${MISSING[*]}"
[ "${#FAILED[@]}" = 0 ] && [ "${#MISSING[@]}" = 0 ] || echo "FAILED: ${FAILED[*]} (their output: $OUT/<script>.log)"
TARGETS_FAILED=$(cat "$OUT/targets-failed")
[ "$TARGETS_FAILED" = 0 ] || echo "targets not met: $TARGETS_FAILED (FAIL above)"
[ "${#FAILED[@]}" = 0 ] && [ "${#MISSING[@]}" = 0 ]
