#!/usr/bin/env bash
# The same call load from SIPp's built-in uac and from `pbxlab load`, both against one
# `sipp -sn uas` on loopback (signaling only, as SIPp's uac sends no RTP by default).
#
# Prints CPU seconds per 1,000 calls and peak RSS for each tool, and the ratios, from one run.
# Memory per concurrent call is the slope of peak RSS between a short and a long hold at the
# same rate (concurrent calls = rate x hold), which removes each tool's fixed baseline.
#
#   benches/compare-sipp.sh                  # RATE=1000 CALLS=20000 HOLD_SHORT_MS=1000 HOLD_LONG_MS=8000
#   RATE=2000 CALLS=40000 benches/compare-sipp.sh
#
# Needs sipp (apt-get install sip-tester) and GNU time (apt-get install time).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-1000}
CALLS=${CALLS:-20000}
HOLD_SHORT_MS=${HOLD_SHORT_MS:-1000}
HOLD_LONG_MS=${HOLD_LONG_MS:-8000}
UAS_PORT=${UAS_PORT:-25060}
UAC_PORT=${UAC_PORT:-25062}

command -v sipp >/dev/null || { echo "needs sipp: apt-get install sip-tester" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }
cargo build --release --quiet
PBXLAB=target/release/pbxlab
WORK=$(mktemp -d)
# Waits for the uas to exit, so a run started right after this one finds the port free.
trap 'kill $UAS_PID 2>/dev/null && while kill -0 $UAS_PID 2>/dev/null; do sleep 0.1; done; rm -rf "$WORK"' EXIT

# A uas with room for the longest run; -aa answers INFO/NOTIFY/OPTIONS automatically.
# exec: $! must be SIPp itself, so the trap below stops it.
(cd "$WORK" && exec sipp -sn uas -i 127.0.0.1 -p "$UAS_PORT" -nostdin -aa -max_socket 65000 >/dev/null 2>&1) &
UAS_PID=$!
sleep 1
# A uas that could not bind (say, the previous run's still exiting) would fail every call.
kill -0 "$UAS_PID" 2>/dev/null || { echo "sipp -sn uas did not start: is port $UAS_PORT busy?" >&2; exit 1; }

# Runs one tool; prints "cpu_s rss_kb failed" (failed = calls that did not complete).
run_sipp() {
  local hold_ms=$1
  (cd "$WORK" && /usr/bin/time -f "%U %S %M" -o "$WORK/time" \
    sipp -sn uac -i 127.0.0.1 -p "$UAC_PORT" -r "$RATE" -d "$hold_ms" -m "$CALLS" -l $((RATE * (hold_ms / 1000 + 5))) \
      -nostdin -timeout $((CALLS / RATE + hold_ms / 1000 + 60))s -timeout_error -trace_stat -stf stat.csv \
      "127.0.0.1:$UAS_PORT" >/dev/null 2>&1 || true)
  local failed
  failed=$(tail -n 1 "$WORK/stat.csv" | awk -F';' '{print $18}')  # FailedCall(C)
  rm -f "$WORK"/*.csv
  # GNU time puts "Command exited with non-zero status" first when a tool fails calls.
  tail -n 1 "$WORK/time" | awk -v f="$failed" '{printf "%.3f %d %s\n", $1 + $2, $3, f}'
}

run_pbxlab() {
  local hold_ms=$1
  /usr/bin/time -f "%U %S %M" -o "$WORK/time" \
    "$PBXLAB" load --target "127.0.0.1:$UAS_PORT" --service uac --calls "$CALLS" --call-rate "$RATE/s" \
      --hold "${hold_ms}ms" --json "$WORK/report.json" >/dev/null 2>"$WORK/stderr" || true
  local failed
  failed=$(python3 -c "import json;print(json.load(open('$WORK/report.json'))['calls']['failed'])")
  # GNU time puts "Command exited with non-zero status" first when a tool fails calls.
  tail -n 1 "$WORK/time" | awk -v f="$failed" '{printf "%.3f %d %s\n", $1 + $2, $3, f}'
}

echo "load: $CALLS calls at $RATE/s; holds ${HOLD_SHORT_MS} ms and ${HOLD_LONG_MS} ms; against sipp -sn uas on 127.0.0.1:$UAS_PORT"
read -r S_CPU S_RSS_SHORT S_FAIL_SHORT < <(run_sipp "$HOLD_SHORT_MS")
read -r P_CPU P_RSS_SHORT P_FAIL_SHORT < <(run_pbxlab "$HOLD_SHORT_MS")
read -r S_CPU_LONG S_RSS_LONG S_FAIL_LONG < <(run_sipp "$HOLD_LONG_MS")
read -r P_CPU_LONG P_RSS_LONG P_FAIL_LONG < <(run_pbxlab "$HOLD_LONG_MS")

python3 - "$CALLS" "$RATE" "$HOLD_SHORT_MS" "$HOLD_LONG_MS" \
  "$S_CPU" "$S_RSS_SHORT" "$S_FAIL_SHORT" "$P_CPU" "$P_RSS_SHORT" "$P_FAIL_SHORT" \
  "$S_CPU_LONG" "$S_RSS_LONG" "$S_FAIL_LONG" "$P_CPU_LONG" "$P_RSS_LONG" "$P_FAIL_LONG" <<'PY'
import sys
calls, rate, hs, hl = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
v = sys.argv[5:]
s_cpu, s_rss, s_fail, p_cpu, p_rss, p_fail = float(v[0]), int(v[1]), v[2], float(v[3]), int(v[4]), v[5]
s_cpu2, s_rss2, s_fail2, p_cpu2, p_rss2, p_fail2 = float(v[6]), int(v[7]), v[8], float(v[9]), int(v[10]), v[11]
conc = lambda h: rate * h / 1000.0
ratio = lambda a, b: f"{a / b:.2f}" if b else "n/a"
per_k = lambda cpu: cpu / calls * 1000.0
slope = lambda a, b: (b - a) * 1024.0 / (conc(hl) - conc(hs))   # bytes per concurrent call
print(f"{'':28}{'SIPp':>12}{'pbxlab':>12}{'ratio':>8}")
print(f"{'CPU s / 1000 calls, hold ' + str(hs) + 'ms':28}{per_k(s_cpu):>12.3f}{per_k(p_cpu):>12.3f}{ratio(p_cpu, s_cpu):>8}")
print(f"{'CPU s / 1000 calls, hold ' + str(hl) + 'ms':28}{per_k(s_cpu2):>12.3f}{per_k(p_cpu2):>12.3f}{ratio(p_cpu2, s_cpu2):>8}")
print(f"{'peak RSS KB, ' + str(int(conc(hs))) + ' concurrent':28}{s_rss:>12}{p_rss:>12}{ratio(p_rss, s_rss):>8}")
print(f"{'peak RSS KB, ' + str(int(conc(hl))) + ' concurrent':28}{s_rss2:>12}{p_rss2:>12}{ratio(p_rss2, s_rss2):>8}")
print(f"{'bytes per concurrent call':28}{slope(s_rss, s_rss2):>12.0f}{slope(p_rss, p_rss2):>12.0f}{ratio(slope(p_rss, p_rss2), slope(s_rss, s_rss2)):>8}")
print("(a zero means that run produced no figures: see the tool's own output)")
print(f"{'failed calls (short, long)':28}{s_fail + ', ' + s_fail2:>12}{p_fail + ', ' + p_fail2:>12}")
PY
