#!/usr/bin/env bash
# The same call load from SIPp's built-in uac and from `pbxlab load`, both against one
# `sipp -sn uas` on loopback (signaling only, as SIPp's uac sends no RTP by default).
#
# For each rate in RATES: DURATION_S seconds of calls at that rate with a short hold, from each
# tool with its default clock: CPU seconds per 1,000 calls, wakeups (voluntary context
# switches) per call, and the ratio. At the first rate, pbxlab runs once more with
# --tick TICK_ALT (1ms: its finest default tick, against the 2 ms that --tick auto picks at
# 1,000 calls/s). Memory per concurrent call is the slope of peak RSS between the short hold
# and a long one at the first rate (concurrent calls = rate x hold), which removes each tool's
# baseline. With REPEAT=n every run is made n times, the two tools alternating, and each figure
# is the median of its n.
#
#   benches/compare-sipp.sh            # RATES="1000 2000 4000" DURATION_S=20 HOLD_SHORT_MS=1000 HOLD_LONG_MS=8000 REPEAT=3 (about 11 minutes)
#   RATES=8000 DURATION_S=10 benches/compare-sipp.sh
#   REPEAT=1 benches/compare-sipp.sh   # one run of each, about 4 minutes
#
# Needs sipp (apt-get install sip-tester) and GNU time (apt-get install time).
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-1000 2000 4000}
SECONDS_PER_RATE=${DURATION_S:-20}
HOLD_SHORT_MS=${HOLD_SHORT_MS:-1000}
HOLD_LONG_MS=${HOLD_LONG_MS:-8000}
REPEAT=${REPEAT:-3}
TICK_ALT=${TICK_ALT:-1ms}
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

# GNU time's "%U %S %M %w" as "cpu_s rss_kb wakeups"; it puts "Command exited with non-zero
# status" first when a tool fails calls, so the figures are its last line.
time_figures() {
  tail -n 1 "$WORK/time" | awk '{printf "%.3f %d %d", $1 + $2, $3, $4}'
}

# run_sipp RATE CALLS HOLD_MS; prints "cpu_s rss_kb wakeups failed".
run_sipp() {
  local rate=$1 calls=$2 hold_ms=$3
  (cd "$WORK" && /usr/bin/time -f "%U %S %M %w" -o "$WORK/time" \
    sipp -sn uac -i 127.0.0.1 -p "$UAC_PORT" -r "$rate" -d "$hold_ms" -m "$calls" -l $((rate * (hold_ms / 1000 + 5))) \
      -nostdin -timeout $((calls / rate + hold_ms / 1000 + 60))s -timeout_error -trace_stat -stf stat.csv \
      "127.0.0.1:$UAS_PORT" >/dev/null 2>&1 || true)
  local failed
  failed=$(tail -n 1 "$WORK/stat.csv" | awk -F';' '{print $18}')  # FailedCall(C)
  rm -f "$WORK"/*.csv
  echo "$(time_figures) $failed"
}

# run_pbxlab RATE CALLS HOLD_MS [TICK]; prints "cpu_s rss_kb wakeups failed".
run_pbxlab() {
  local rate=$1 calls=$2 hold_ms=$3 tick=${4:-auto}
  /usr/bin/time -f "%U %S %M %w" -o "$WORK/time" \
    "$PBXLAB" load --target "127.0.0.1:$UAS_PORT" --service uac --calls "$calls" --call-rate "$rate/s" \
      --hold "${hold_ms}ms" --tick "$tick" --json "$WORK/report.json" >/dev/null 2>"$WORK/stderr" || true
  local failed
  failed=$(python3 -c "import json;print(json.load(open('$WORK/report.json'))['calls']['failed'])" 2>/dev/null || echo "?")
  echo "$(time_figures) $failed"
}

echo "load: ${SECONDS_PER_RATE} s of calls at each of $RATES calls/s, hold ${HOLD_SHORT_MS} ms (and ${HOLD_LONG_MS} ms at the first rate); against sipp -sn uas on 127.0.0.1:$UAS_PORT; each figure the median of $REPEAT run(s)"
# Lines of "label rate calls hold_ms sipp-figures pbxlab-figures" for the report below.
RESULTS=$WORK/results
first=${RATES%% *}
for _ in $(seq "$REPEAT"); do
  for rate in $RATES; do
    calls=$((rate * SECONDS_PER_RATE))
    S=$(run_sipp "$rate" "$calls" "$HOLD_SHORT_MS")
    echo "short $rate $calls $HOLD_SHORT_MS $S $(run_pbxlab "$rate" "$calls" "$HOLD_SHORT_MS")" >>"$RESULTS"
    # pbxlab with the tick TICK_ALT at the first rate, against the same SIPp run.
    if [ "$rate" = "$first" ]; then
      echo "tick=$TICK_ALT $rate $calls $HOLD_SHORT_MS $S $(run_pbxlab "$rate" "$calls" "$HOLD_SHORT_MS" "$TICK_ALT")" >>"$RESULTS"
    fi
  done
  calls=$((first * SECONDS_PER_RATE))
  echo "long $first $calls $HOLD_LONG_MS $(run_sipp "$first" "$calls" "$HOLD_LONG_MS") $(run_pbxlab "$first" "$calls" "$HOLD_LONG_MS")" >>"$RESULTS"
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault((f[0], int(f[1]), int(f[2]), int(f[3])), []).append(f[4:])
# One row per run kind, each figure the median of its repeats; failed calls listed per run.
rows = []
for (label, rate, calls, hold), reps in runs.items():
    def tool(i):
        med = lambda k, cast: statistics.median(cast(r[i + k]) for r in reps)
        return dict(cpu=med(0, float), rss=int(med(1, int)), wakes=med(2, int),
                    failed="/".join(r[i + 3] for r in reps))
    rows.append(dict(label=label, rate=rate, calls=calls, hold=hold, sipp=tool(0), pbx=tool(4)))
ratio = lambda a, b: f"{a / b:.2f}" if b else "n/a"
per_k = lambda r, t: r[t]["cpu"] / r["calls"] * 1000.0
wakes = lambda r, t: r[t]["wakes"] / r["calls"]
conc = lambda r: int(r["rate"] * r["hold"] / 1000)
print(f"{'':60}{'SIPp':>10}{'pbxlab':>10}{'ratio':>8}")
tag = lambda r: f", pbxlab --{r['label'].replace('=', ' ')}" if r["label"].startswith("tick") else ""
for r in rows:
    name = f"CPU s / 1000 calls, {r['rate']}/s, hold {r['hold']} ms{tag(r)}"
    print(f"{name:60}{per_k(r, 'sipp'):>10.3f}{per_k(r, 'pbx'):>10.3f}{ratio(per_k(r, 'pbx'), per_k(r, 'sipp')):>8}")
for r in rows:
    name = f"wakeups per call, {r['rate']}/s, hold {r['hold']} ms{tag(r)}"
    print(f"{name:60}{wakes(r, 'sipp'):>10.2f}{wakes(r, 'pbx'):>10.2f}")
short, long = next(r for r in rows if r["label"] == "short"), rows[-1]
for r in (short, long):
    name = f"peak RSS KB, {conc(r)} concurrent"
    print(f"{name:60}{r['sipp']['rss']:>10}{r['pbx']['rss']:>10}{ratio(r['pbx']['rss'], r['sipp']['rss']):>8}")
# Bytes per concurrent call: the slope of peak RSS between the two holds.
slope = lambda t: (long[t]["rss"] - short[t]["rss"]) * 1024.0 / max(conc(long) - conc(short), 1)
print(f"{'bytes per concurrent call':60}{slope('sipp'):>10.0f}{slope('pbx'):>10.0f}{ratio(slope('pbx'), slope('sipp')):>8}")
print("(a zero means that run produced no figures: see the tool's own output)")
failed = lambda t: ", ".join(r[t]["failed"] for r in rows if t == "pbx" or not r["label"].startswith("tick"))
print(f"{'failed calls (each run, in order)':60}{failed('sipp'):>10}  {failed('pbx')}")
PY

# What one wakeup costs here: a process that only sleeps to a 1 ms grid (woken by its timer),
# and one woken instead by a datagram that another process sends on that grid. Both tools pay
# the timer's for every wakeup counted above; on a VM it can be the larger part of a call.
python3 - <<'PY'
import os, resource, socket, time
n = 2000
def on_grid(t0, i):
    d = t0 + i / 1000 - time.monotonic()
    if d > 0:
        time.sleep(d)
def cpu_per_wakeup(r0, r1):
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return cpu / max(r1.ru_nvcsw - r0.ru_nvcsw, 1) * 1e6
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
for i in range(1, n + 1):
    on_grid(t0, i)
timer = cpu_per_wakeup(r0, resource.getrusage(resource.RUSAGE_SELF))
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
if os.fork() == 0:
    tx, t0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), time.monotonic()
    for i in range(1, n + 1):
        on_grid(t0, i)
        tx.sendto(b"x", rx.getsockname())
    os._exit(0)
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(n):
    rx.recv(16)
datagram = cpu_per_wakeup(r0, resource.getrusage(resource.RUSAGE_SELF))
os.wait()
print(f"CPU per wakeup: {timer:.1f} us woken by its timer, {datagram:.1f} us woken by a datagram")
PY
