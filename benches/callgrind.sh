#!/usr/bin/env bash
# Instructions per request on a cache hit, counted by callgrind (exact, repeatable on a
# noisy machine), minus the bare service's, and a team member's hit as a multiple of a
# single user's. See benches/callgrind.rs for the variants.
#
#   bash benches/callgrind.sh [requests]      (default 100000)
#   bash benches/callgrind.sh server [requests] (default 2000): instructions per request
#       in an axum server process on loopback, with and without the layer
#   bash benches/callgrind.sh miss [misses]   (default 2000): instructions per cache miss,
#       and per miss beside its floor (raw select + decrypt) on SQLite, and on PostgreSQL
#       too when BYOK_TEST_POSTGRES_URL is set (`bash .ci/test --run` sets it) and the
#       driver has the `postgres` feature (CALLGRIND_FEATURES=postgres)
#
# Needs valgrind. Builds the `callgrind` bench target in the bench profile first (with
# CALLGRIND_FEATURES, e.g. `metrics`), unless CALLGRIND_EXE names an already built
# driver (e.g. one built from another commit).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=hit
if [[ "${1:-}" == miss || "${1:-}" == server ]]; then
  mode=$1
  shift
fi
n="${1:-$([[ $mode == hit ]] && echo 100000 || echo 2000)}"
exe=${CALLGRIND_EXE:-$(cargo bench --bench callgrind --no-run --features "${CALLGRIND_FEATURES:-}" --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "callgrind" and m.get("executable"):
        print(m["executable"])')}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() {
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*drive_requests*' \
    --callgrind-out-file="$out/$1.out" "$exe" "$1" "${2:-$n}" >/dev/null 2>"$out/$1.log"
  grep -m1 '^summary:' "$out/$1.out" | awk '{print $2}'
}
if [[ $mode == server ]]; then
  echo "driver $exe, $n and $((2 * n)) requests each, server process only"
  printf '%-12s %12s\n' variant Ir/request
  for v in axum_bare axum_floor axum_byok; do
    per=$(echo "($(count "$v" $((2 * n))) - $(count "$v"))/ $n" | bc -l)
    printf '%-12s %12.1f\n' "$v" "$per"
    declare "ir_$v=$per"
  done
  printf '%-12s %12.1f\n' 'byok - bare' "$(echo "$ir_axum_byok - $ir_axum_bare" | bc -l)"
  printf '%-12s %12.1f\n' 'floor - bare' "$(echo "$ir_axum_floor - $ir_axum_bare" | bc -l)"
  exit 0
fi
if [[ $mode == miss ]]; then
  echo "driver $exe, $n misses"
  ir=$(count byok_miss)
  printf '%-20s %12.0f\n' 'byok_miss Ir/miss' "$(echo "$ir / $n" | bc -l)"
  backends=sqlite
  [[ -n ${BYOK_TEST_POSTGRES_URL:-} && ,${CALLGRIND_FEATURES:-}, == *,postgres,* ]] && backends+=" postgres"
  printf '%-10s %14s %14s %8s\n' backend 'byok Ir/miss' 'raw Ir/miss' ratio
  for b in $backends; do
    byok=$(count "miss_byok_$b")
    raw=$(count "miss_raw_$b")
    printf '%-10s %14.0f %14.0f %8.3f\n' "$b" "$(echo "$byok / $n" | bc -l)" "$(echo "$raw / $n" | bc -l)" "$(echo "$byok / $raw" | bc -l)"
  done
  exit 0
fi
echo "driver $exe, $n requests each"
bare=$(count bare)
printf '%-20s %10s %12s\n' variant Ir/request 'over bare'
printf '%-20s %10.1f %12s\n' bare "$(echo "$bare / $n" | bc -l)" -
for v in prebuilt_arc_floor naive_moka_layer byok_hit byok_team_hit byok_team_mixed_hit; do
  ir=$(count "$v")
  printf '%-20s %10.1f %12.1f\n' "$v" "$(echo "$ir / $n" | bc -l)" "$(echo "($ir - $bare) / $n" | bc -l)"
  declare "ir_$v=$ir"
done
# Issue 19's target: a member's hit at most 1.6x a single user's, each over its bare
# service (a member's request carries a second header, which the bare service builds too).
bare_team=$(count bare_team)
printf '%-20s %10.1f %12s\n' bare_team "$(echo "$bare_team / $n" | bc -l)" -
for v in byok_team_hit byok_team_mixed_hit; do
  t=ir_$v
  printf '%-20s %10.1f %12.3fx byok_hit (each over its bare)\n' "$v" "$(echo "(${!t} - $bare_team) / $n" | bc -l)" "$(echo "(${!t} - $bare_team) / ($ir_byok_hit - $bare)" | bc -l)"
done
