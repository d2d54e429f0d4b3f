#!/usr/bin/env bash
# 50,000 digest registrations at one Kamailio (tests/interop/kamailio.cfg) from SIPp and from
# pbxlab load, one after the other, at the same offered rate: wall time, failures, CPU seconds
# and peak RSS of each generator.
#
#   benches/register-50k.sh                 # USERS=50000 RATE=10000
#   USERS=20000 PBXLAB_ARGS="--tick 2ms" benches/register-50k.sh
#
# Needs sipp and kamailio (apt-get install sip-tester kamailio) and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-50000}
RATE=${RATE:-10000}
PORT=${PORT:-26060}
SIPP_PORT=${SIPP_PORT:-26062}

cargo build --release --quiet
WORK=$(mktemp -d)
sed "s/LISTEN_ADDR/127.0.0.1:$PORT/; s/UAS_ADDR/127.0.0.1:9/" tests/interop/kamailio.cfg > "$WORK/kamailio.cfg"
kamailio -f "$WORK/kamailio.cfg" -DD -E -m 256 -M 16 -Y "$WORK" -P "$WORK/kamailio.pid" 2>"$WORK/kamailio.log" &
KAM_PID=$!
trap 'kill $KAM_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
sleep 2

# Same users and password rule for both tools: user N, password pw-N.
{ echo SEQUENTIAL; for ((u = 1000; u < 1000 + USERS; u++)); do echo "$u;[authentication username=$u password=pw-$u]"; done; } > "$WORK/users.csv"

echo "$USERS digest registrations at $RATE/s offered, Kamailio on 127.0.0.1:$PORT"
(cd "$WORK" && /usr/bin/time -f "%e %U %S %M" -o "$WORK/sipp.time" \
  sipp -sf "$OLDPWD/benches/sipp/register.xml" -inf "$WORK/users.csv" -r "$RATE" -m "$USERS" -l "$USERS" \
    -i 127.0.0.1 -p "$SIPP_PORT" -nostdin -timeout 120s -trace_stat -stf sipp.csv "127.0.0.1:$PORT" >/dev/null 2>&1 || true)
SIPP_FAILED=$(tail -n 1 "$WORK/sipp.csv" | awk -F';' '{print $18}')  # FailedCall(C)
SIPP_OK=$(tail -n 1 "$WORK/sipp.csv" | awk -F';' '{print $16}')  # SuccessfulCall(C)
read -r S_WALL S_USER S_SYS S_RSS < <(tail -n 1 "$WORK/sipp.time")

/usr/bin/time -f "%e %U %S %M" -o "$WORK/pbxlab.time" \
  target/release/pbxlab load --target "127.0.0.1:$PORT" --users "$USERS" --first-user 1000 \
    --register-rate "$RATE/s" --calls 0 ${PBXLAB_ARGS:-} --json "$WORK/report.json" >/dev/null 2>&1 || true
read -r P_WALL P_USER P_SYS P_RSS < <(tail -n 1 "$WORK/pbxlab.time")
P_SUMMARY=$(python3 -c "
import json; r = json.load(open('$WORK/report.json'))
g = r['registrations']; m = r['metrics']['register']
print(g['succeeded'], g['failed'], m['p50_us'] / 1000, m['p99_us'] / 1000)")
read -r P_OK P_FAILED P_P50 P_P99 <<< "$P_SUMMARY"

printf '%-8s %10s %8s %8s %9s %9s  %s\n' tool succeeded failed wall_s cpu_s rss_KB latency
printf '%-8s %10s %8s %8s %9.2f %9s  %s\n' SIPp "$SIPP_OK" "$SIPP_FAILED" "$S_WALL" "$(echo "$S_USER + $S_SYS" | bc)" "$S_RSS" "(SIPp reports response-time buckets, not percentiles)"
printf '%-8s %10s %8s %8s %9.2f %9s  p50 %s ms, p99 %s ms\n' pbxlab "$P_OK" "$P_FAILED" "$P_WALL" "$(echo "$P_USER + $P_SYS" | bc)" "$P_RSS" "$P_P50" "$P_P99"
