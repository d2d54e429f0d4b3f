#!/usr/bin/env bash
# The drill in virtual time: the embedded drill (2,400 echo calls with RTP, 80 s of cluster
# time) and the headline (scenarios/drill-10k.toml: 50,000 users, 10,000 user-to-user calls with
# RTP both ways, a media server failed), each run once by `pbxlab drill --virtual`; then a short
# exploration of the embedded drill.
#
#   benches/virtual-drill.sh                  # all three
#   SKIP_HEADLINE=1 benches/virtual-drill.sh  # without the minute-long headline
#
# Prints per drill: its verdict, cluster time, wall time and how much faster than real time,
# events (datagrams delivered plus instants stepped) and events per second, detection, calls
# moved and dropped, media gap p99, and peak RSS; for the exploration, seeds per second.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
BIN=target/release/pbxlab
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

run() {
    local name=$1
    shift
    local status=0
    /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" drill --virtual "$@" --json "$WORK/out.json" \
        > "$WORK/out.txt" 2> "$WORK/err.txt" || status=$?
    python3 - "$name" "$status" "$WORK/out.json" "$(cat "$WORK/rss")" <<'PY'
import json, sys
name, status, path, rss = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
d = json.load(open(path))
v = d["virtual"]
print(f"{name}: verdict {d['verdict']} (exit {status})")
print(f"  cluster time {v['end_s']:.1f} s, wall {v['wall_s']:.1f} s "
      f"({v['end_s'] / v['wall_s']:.1f}x real time), {v['events']:,} events "
      f"({v['datagrams']:,} datagrams), {v['events_per_s'] / 1e6:.2f} M events/s, peak RSS {rss / 1024:.0f} MB")
for f in d["faults"]:
    det = f["detection_us"]
    gap = f["media_gap"]
    gap = "-" if not gap or "p99_us" not in gap else "%.1f ms" % (gap["p99_us"] / 1000)
    print(f"  {f['action']} {f['server']} at {f['at_s']:.2f} s: detection "
          f"{'-' if det is None else f'{det / 1000:.0f} ms'}, moved "
          f"{f['reassignment'].get('count', 0) if f['reassignment'] else 0}, dropped {len(f['dropped'])}, "
          f"media gap p99 {gap}")
PY
}

run "embedded drill"
if [ -z "${SKIP_HEADLINE:-}" ]; then
    run "headline drill" scenarios/drill-10k.toml
fi
start=$(date +%s.%N)
"$BIN" drill --virtual --explore 10 --seed 1000 > "$WORK/explore.txt" 2>/dev/null || true
end=$(date +%s.%N)
tail -n 1 "$WORK/explore.txt"
python3 -c "print(f'  {10 / ($end - $start):.2f} seeds/s')"
