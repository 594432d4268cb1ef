#!/usr/bin/env bash
# Instruction-count regression guard: runs each workload of benches/callgrind.rs
# under `valgrind --tool=callgrind`, counting only the workload's measured
# function (`cg_workload_<name>`, via --toggle-collect), and compares the
# instructions per 1 000 frames with benches/callgrind/baseline.txt.
#
#   benches/callgrind/guard.sh [WORKLOAD...]   check (make callgrind)
#   UPDATE=1 benches/callgrind/guard.sh        store new figures (make callgrind-baseline)
#
# Fails when a workload is more than CALLGRIND_TOLERANCE percent (default 5)
# above its baseline; improvements beyond the tolerance are reported too.
# Counts are repeatable on a noisy machine, but they depend on the CPU's
# features (glibc and memchr pick SIMD variants at run time), the toolchain
# and dependency versions: regenerate the baseline when those change.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASELINE=benches/callgrind/baseline.txt
TOLERANCE=${CALLGRIND_TOLERANCE:-5}
UPDATE=${UPDATE:-0}
CARGO=${CARGO:-cargo}

if [ "${CALLGRIND_SKIP:-0}" = 1 ]; then echo "callgrind guard: skipped (CALLGRIND_SKIP=1)"; exit 0; fi
command -v valgrind >/dev/null || { echo "callgrind guard: valgrind is not installed (apt-get install valgrind; or CALLGRIND_SKIP=1)" >&2; exit 1; }

echo "callgrind guard: building benches/callgrind.rs (bench profile)"
bin=$("$CARGO" bench --locked --bench callgrind --no-run --message-format=json \
  | grep -o '"executable":"[^"]*/callgrind-[0-9a-f]*"' | tail -n1 | cut -d'"' -f4) \
  || { echo "callgrind guard: cargo bench --bench callgrind --no-run failed" >&2; exit 1; }
[ -x "$bin" ] || { echo "callgrind guard: bench executable not found" >&2; exit 1; }

mapfile -t all < <("$bin" --list)
if [ $# -gt 0 ]; then
  workloads=("$@")
else
  workloads=("${all[@]}")
fi

# name -> stored instructions per 1 000 frames
declare -A base
if [ -f "$BASELINE" ]; then
  while read -r name count _; do
    case "$name" in ''|'#'*) continue ;; esac
    base[$name]=$count
  done <"$BASELINE"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Instructions per 1 000 frames of workload $1, one callgrind run.
count() {
  local w=$1 out="$tmp/$1.out" log="$tmp/$1.log" frames ir
  if ! valgrind --tool=callgrind --collect-atstart=no \
      --toggle-collect="callgrind::cg_workload_$w" \
      --callgrind-out-file="$out" "$bin" "$w" >"$log" 2>&1; then
    cat "$log" >&2
    echo "callgrind guard: workload $w failed" >&2
    return 1
  fi
  frames=$(grep -m1 -o 'frames=[0-9]*' "$log" | cut -d= -f2)
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
  if [ -z "$frames" ] || [ -z "$ir" ] || [ "$ir" -eq 0 ]; then
    cat "$log" >&2
    echo "callgrind guard: no instruction count for $w (is cg_workload_$w still #[inline(never)]?)" >&2
    return 1
  fi
  echo $(( ir * 1000 / frames ))
}

# Counts vary by ~0.1-0.3 % run to run (tokio's select! polls its branches in
# random order); a new baseline takes the median of CALLGRIND_RUNS runs.
if [ "$UPDATE" = 1 ]; then RUNS=${CALLGRIND_RUNS:-3}; else RUNS=${CALLGRIND_RUNS:-1}; fi

# name -> instructions per 1 000 frames
declare -A now
for w in "${workloads[@]}"; do
  runs=()
  for _ in $(seq "$RUNS"); do
    c=$(count "$w") || exit 1
    runs+=("$c")
  done
  mapfile -t runs < <(printf '%s\n' "${runs[@]}" | sort -n)
  now[$w]=${runs[$(( (RUNS - 1) / 2 ))]}
  if [ "$RUNS" -gt 1 ]; then echo "  $w: ${runs[*]} -> median ${now[$w]}"; fi
done

cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
features=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -xE 'avx|avx2|avx512f|bmi2|erms|fsrm' | tr '\n' ' ' | sed 's/ $//' || true)
machine="cpu: ${cpu:-unknown} [${features}]; $(valgrind --version); $(rustc --version | cut -d' ' -f1-2); glibc $(ldd --version 2>/dev/null | awk 'NR == 1 { print $NF }')"

if [ "$UPDATE" = 1 ]; then
  {
    echo "# Callgrind instructions (Ir) per 1000 frames for each workload of benches/callgrind.rs,"
    echo "# counted inside cg_workload_<name> only. Checked by \`make callgrind\` (tolerance"
    echo "# CALLGRIND_TOLERANCE, default 5 %). Regenerate after an intended change, or on a new"
    echo "# machine/toolchain, with \`make callgrind-baseline\` (UPDATE=1 benches/callgrind/guard.sh)."
    echo "# $machine"
    # Workloads not measured this time (a subset was named) keep their figure.
    for w in "${all[@]}"; do
      if [ -n "${now[$w]:-}" ]; then echo "$w ${now[$w]}"; elif [ -n "${base[$w]:-}" ]; then echo "$w ${base[$w]}"; fi
    done
  } >"$BASELINE.new"
  mv "$BASELINE.new" "$BASELINE"
  echo "callgrind guard: wrote $BASELINE"
  cat "$BASELINE"
  exit 0
fi

[ -f "$BASELINE" ] || { echo "callgrind guard: no $BASELINE; run \`make callgrind-baseline\`" >&2; exit 1; }

stored_machine=$(grep -m1 '^# cpu:' "$BASELINE" | sed 's/^# //' || true)
if [ -n "$stored_machine" ] && [ "$stored_machine" != "$machine" ]; then
  echo "callgrind guard: note: the baseline was made on a different machine or toolchain:"
  echo "  baseline: $stored_machine"
  echo "  this run: $machine"
fi

printf '\n%-18s %14s %14s %9s  %s\n' workload "baseline Ir" "now Ir" "delta" "(per 1000 frames)"
worse=0
better=0
for w in "${workloads[@]}"; do
  n=${now[$w]}
  b=${base[$w]:-}
  if [ -z "$b" ]; then
    printf '%-18s %14s %14d %9s  %s\n' "$w" "-" "$n" "-" "NEW: not in the baseline"
    worse=1
    continue
  fi
  read -r delta verdict < <(awk -v n="$n" -v b="$b" -v t="$TOLERANCE" 'BEGIN {
    d = (n - b) * 100 / b
    v = (d > t) ? "REGRESSION" : (d < -t) ? "improved" : "ok"
    printf "%+.2f%% %s\n", d, v }')
  printf '%-18s %14d %14d %9s  %s\n' "$w" "$b" "$n" "$delta" "$verdict"
  case $verdict in
    REGRESSION) worse=1 ;;
    improved) better=1 ;;
  esac
done
echo

if [ "$better" = 1 ]; then
  echo "callgrind guard: some workloads improved by more than ${TOLERANCE}%: run \`make callgrind-baseline\` to store the new figures."
fi
if [ "$worse" = 1 ]; then
  echo "callgrind guard: FAILED: instruction count more than ${TOLERANCE}% above the baseline (or a workload has none)." >&2
  echo "  Profile it: valgrind --tool=callgrind --collect-atstart=no --toggle-collect='callgrind::cg_workload_NAME' $bin NAME; callgrind_annotate callgrind.out.*" >&2
  echo "  If the cost is intended: make callgrind-baseline, and commit benches/callgrind/baseline.txt." >&2
  exit 1
fi
echo "callgrind guard: ok (tolerance ${TOLERANCE}%)"
