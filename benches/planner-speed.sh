#!/usr/bin/env bash
# The planner's speed per simulated call against the same loss model in SimPy, in one run:
# benches/planner/loss.toml (120 slots, 110 erlangs, probes every second, 3,000 h) through
# `pbxlab plan`, and benches/planner/loss_simpy.py for a shorter span (SimPy needs minutes for
# 3,000 h). Both are charged their process CPU time (user + system), which a busy machine
# disturbs less than wall time; the ratio is SimPy's CPU per call over pbxlab's.
#
#   benches/planner-speed.sh                    # HOURS=3000 SIMPY_HOURS=300
#
# Needs python3 with simpy (pip install simpy) and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."

HOURS=${HOURS:-3000}
SIMPY_HOURS=${SIMPY_HOURS:-300}

cargo build --release --quiet
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
sed "s/^duration = .*/duration = \"${HOURS}h\"/" benches/planner/loss.toml > "$WORK/loss.toml"

/usr/bin/time -f "%e %U %S %M" -o "$WORK/plan.time" \
  target/release/pbxlab plan "$WORK/loss.toml" --json "$WORK/plan.json" > /dev/null
read -r P_WALL P_USER P_SYS P_RSS < <(tail -n 1 "$WORK/plan.time")
read -r P_CALLS P_BLOCK P_EVENTS < <(python3 -c "
import json; r = json.load(open('$WORK/plan.json')); m = r['roles']['media']
print(m['offered'], '%.5f' % m['blocking'], r['events'])")
read -r S_CALLS S_BLOCK S_WALL S_CPU < <(python3 benches/planner/loss_simpy.py "$SIMPY_HOURS")

python3 - "$P_CALLS" "$P_BLOCK" "$P_EVENTS" "$P_WALL" "$P_USER" "$P_SYS" "$P_RSS" \
  "$S_CALLS" "$S_BLOCK" "$S_WALL" "$S_CPU" "$HOURS" "$SIMPY_HOURS" <<'PY'
import sys
(p_calls, p_block, p_events, p_wall, p_user, p_sys, p_rss,
 s_calls, s_block, s_wall, s_cpu, hours, s_hours) = sys.argv[1:]
p_cpu = float(p_user) + float(p_sys)
p_us = p_cpu / int(p_calls) * 1e6
s_us = float(s_cpu) / int(s_calls) * 1e6
print(f"{'model':8} {'hours':>6} {'calls':>10} {'blocking':>9} {'events/call':>12} {'cpu_s':>8} {'us/call':>8}")
print(f"{'pbxlab':8} {hours:>6} {int(p_calls):>10} {p_block:>9} {int(p_events) / int(p_calls):>12.2f} {p_cpu:>8.2f} {p_us:>8.3f}")
print(f"{'SimPy':8} {s_hours:>6} {int(s_calls):>10} {s_block:>9} {'':>12} {float(s_cpu):>8.2f} {s_us:>8.3f}")
print(f"pbxlab is {s_us / p_us:.1f}x SimPy per simulated call (goal >= 50x); peak RSS {p_rss} KB")
PY
