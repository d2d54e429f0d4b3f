#!/usr/bin/env bash
# Call Manager takeover in virtual time: the three shipped Call Manager drills (the active
# failed and recovered, cut off and healed, all three upgraded in turn) under the drill's load
# (2,400 echo calls with RTP, 1,000 users refreshing every 16 s, 80 calls/s arriving), and the
# same load against one Call Manager, to show what replication costs the simulation.
#
#   benches/cm-takeover.sh
#
# Prints per drill: its verdict, wall time, events per second, and per Call Manager fault the
# takeover, the fencing (when the old active stopped serving, and the gap before the new one),
# established calls and registrations lost, INVITE retransmissions and the longest signalling
# silence; then each Call Manager's replication counters.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
BIN=target/release/pbxlab
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The Call Manager drill's load and faults with a single Call Manager (no faults of it): the
# same cluster time, nothing replicated.
sed -e 's/^nodes = 3$/nodes = 1/' -e '/^\[\[fault\]\]$/,$d' scenarios/drill-cm.toml > "$WORK/one.toml"
cat >> "$WORK/one.toml" <<'TOML'
[[fault]]
at = "40s"
action = "drain"
server = "media-3"
TOML

run() {
    local name=$1 file=$2
    local status=0
    "$BIN" drill --virtual "$file" --json "$WORK/out.json" > "$WORK/out.txt" 2>&1 || status=$?
    python3 - "$name" "$status" "$WORK/out.json" <<'PY'
import json, sys
name, status, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = json.load(open(path))
v = d["virtual"]
inv = next((m for m in d["load"]["messages"] if m.get("name") == "INVITE"), {}) if isinstance(d["load"].get("messages"), list) else {}
print(f"{name}: {d['verdict'].upper()} (exit {status}), {v['end_s']:.1f} s of cluster time in "
      f"{v['wall_s']:.2f} s wall, {v['events_per_s'] / 1e6:.2f} M events/s, "
      f"calls failed {d['load']['calls']['failed']}")
for f in d["faults"]:
    c = f.get("callmanager")
    if not c:
        continue
    t = c["takeover_us"]
    line = f"  {f['action']} {f['server']} at {f['at_s']:.2f} s: {c['before']} -> {c['after']}"
    if c["hit_active"]:
        line += f", takeover {t / 1000:.1f} ms" if t is not None else ", no takeover"
    if c.get("fenced_us") is not None:
        line += (f", old active stopped {c['fenced_us'] / 1000:.1f} ms after the fault and "
                 f"{c['handover_gap_us'] / 1000:.1f} ms before the new one")
    line += (f", established lost {c['established_lost']}/{c['established']}, registrations lost "
             f"{c['registrations_lost']}/{c['registrations']}, longest silence "
             f"{c['longest_silence_us'] / 1000:.1f} ms, unserved {c['unserved']}")
    print(line)
for c in v.get("callmanagers", []):
    s = c["stats"]
    print(f"  {c['name']}: {c['role']}, term {c['term']}, applied {c['applied']}, "
          f"entries sent {s['entries_sent']} (again {s['entries_resent']}), snapshots "
          f"{s['snapshots_sent']} sent / {s['snapshots_taken']} taken, refused {s['rejected']}")
PY
    grep -E '^INVITE ' "$WORK/out.txt" | awk '{print "  INVITE sent " $2 ", retransmitted " $3}'
}

run "one Call Manager (same load)" "$WORK/one.toml"
for s in drill-cm drill-cm-partition drill-cm-rolling; do
    run "$s" "scenarios/$s.toml"
done
