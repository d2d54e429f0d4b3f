#!/usr/bin/env bash
# Call Manager takeover live: the three shipped Call Manager drills run on loopback (three Call
# Manager threads, the virtual IP a socket only the serving one holds bound) under the drill's
# load (2,400 echo calls with RTP, 1,000 users refreshing every 16 s, 80 calls/s arriving), and
# the same load against one Call Manager, to show what replication costs live.
#
#   benches/cm-takeover-live.sh        (about 7 minutes: four drills of 100 s)
#
# Prints per drill: its verdict, the CPU the whole process used (user + system), and per Call
# Manager fault the takeover, the fencing, established calls and registrations lost, INVITEs
# retransmitted and the datagrams the generator found refused while nobody held the address.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
BIN=target/release/pbxlab
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The same load and a fault that is not a Call Manager's, against one Call Manager.
sed -e 's/^nodes = 3$/nodes = 1/' -e '/^\[\[fault\]\]$/,$d' scenarios/drill-cm.toml > "$WORK/one.toml"
cat >> "$WORK/one.toml" <<'TOML'
[[fault]]
at = "40s"
action = "drain"
server = "media-3"
TOML

run() {
    python3 - "$1" "$2" "$BIN" "$WORK/out.json" <<'PY'
import json, resource, subprocess, sys
name, scenario, binary, out = sys.argv[1:5]
status = subprocess.run([binary, "drill", scenario, "--json", out],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
d = json.load(open(out))
msgs = d["load"].get("messages", {})
inv = msgs.get("INVITE", {}) if isinstance(msgs, dict) else {}
refused = d["load"].get("failures", {}).get("receive: connection refused", 0)
print(f"{name}: exit {status}, cpu {r.ru_utime:.1f} s user + {r.ru_stime:.1f} s system, "
      f"INVITEs retransmitted {inv.get('retransmitted', 0)}, refused at the virtual IP {refused}")
for f in d.get("faults", []):
    c = f.get("callmanager")
    if not c:
        continue
    t = c.get("takeover_us")
    fenced = c.get("fenced_us")
    gap = c.get("handover_gap_us")
    print(f"  {f['action']} {f['server']}: {c.get('before')} -> {c.get('after')}, "
          f"takeover {t / 1000 if t is not None else '-'} ms, "
          f"stopped {fenced / 1000 if fenced is not None else '-'} ms after the fault, "
          f"gap {gap / 1000 if gap is not None else '-'} ms, "
          f"established lost {c['established_lost']} / {c['established']}, "
          f"registrations lost {c['registrations_lost']} / {c['registrations']}")
PY
}

run "one Call Manager (drain media-3)" "$WORK/one.toml"
run "fail cm-1, recover" scenarios/drill-cm.toml
run "partition cm-1, heal" scenarios/drill-cm-partition.toml
run "upgrade cm-1, cm-2, cm-3" scenarios/drill-cm-rolling.toml
