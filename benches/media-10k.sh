#!/usr/bin/env bash
# The headline with media, in one run: `pbxlab cluster scenarios/scale-10k.toml` and
# `pbxlab load` side by side on this machine. 50,000 users register with digest auth, then
# calls between them at 500/s held 20 s (10,500 up at once), every call with G.711 RTP both ways
# through a media node. Right before, this machine's loopback ceiling for RTP-sized datagrams
# (UDP GSO+GRO, udp/examples/ceiling.rs) is measured, and the run's packet rate is given
# against it.
#
#   benches/media-10k.sh                      # RATE=500 HOLD=20 DURATION=40
#   RATE=250 benches/media-10k.sh             # half the calls
#
# Prints: packets/s each way at the media nodes (the peak over 2 s samples), CPU seconds per
# million media packets for the generator's RTP worker, the node thread and the Call Manager
# thread, RFC 3550 loss and sent-not-received, jitter p99, the streams' MOS, peak concurrency,
# SIP retransmissions, failed calls, servers marked down,
# node sessions against the Call Manager's at every sample, and each thread's worst lateness.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-500}
HOLD=${HOLD:-20}
DURATION=${DURATION:-40}
SIP=${SIP:-127.0.0.1:25080}
CTL=${CTL:-127.0.0.1:25081}
TOKEN=bench-token-$$

cargo build --release --quiet
cargo build --release --quiet -p pbxlab-udp --example ceiling
WORK=$(mktemp -d)
CLUSTER_PID=
trap '[ -n "$CLUSTER_PID" ] && kill "$CLUSTER_PID" 2>/dev/null; rm -rf "$WORK"' EXIT

echo "== loopback ceiling (172-byte datagrams, one socket to another)"
target/release/examples/ceiling gso 3 | tee "$WORK/ceiling.txt"
target/release/examples/ceiling plain 3
CEILING=$(sed -E 's/.*: ([0-9]+) datagrams\/s received.*/\1/' "$WORK/ceiling.txt")

RUN_FOR=$((DURATION + HOLD + 40))
target/release/pbxlab cluster scenarios/scale-10k.toml --sip "$SIP" --ctl "$CTL" --admin-token "$TOKEN" \
  --for "${RUN_FOR}s" --json "$WORK/cluster.json" >"$WORK/cluster.txt" 2>"$WORK/cluster.log" &
CLUSTER_PID=$!
sleep 1.5

# Each thread's CPU (utime + stime, in clock ticks) from /proc, read last while it lived.
thread_cpu() { # PID NAME
  local t total=0
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ]; then
      total=$((total + $(awk '{print $14 + $15}' "$t/stat")))
    fi
  done
  echo "$total"
}

echo "== pbxlab load: ${RATE}/s for ${DURATION}s, hold ${HOLD}s, --rtp 1"
target/release/pbxlab load --target "$SIP" scenarios/scale-10k.toml --domain pbxlab.test \
  --register-rate 10000/s --expires 60 --duration "${DURATION}s" --call-rate "$RATE/s" \
  --hold "${HOLD}s" --arrivals fixed --rtp 1 --json "$WORK/load.json" >"$WORK/load.txt" 2>"$WORK/load.log" &
LOAD_PID=$!
: >"$WORK/samples"
while kill -0 "$LOAD_PID" 2>/dev/null; do
  RTP=$(thread_cpu "$LOAD_PID" pbxlab-rtp)
  NODES=$(thread_cpu "$CLUSTER_PID" pbxlab-nodes)
  CM=$(thread_cpu "$CLUSTER_PID" pbxlab-cm)
  [ "$RTP" -gt 0 ] && echo "$RTP $NODES $CM" >"$WORK/cpu"
  if target/release/pbxlab ctl --ctl "$CTL" --admin-token "$TOKEN" status --json >"$WORK/status.json" 2>/dev/null; then
    python3 - "$WORK/status.json" >>"$WORK/samples" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
media = [n for n in s["nodes"] if n["role"] == "media"]
print(json.dumps({
    "t": s["elapsed_s"],
    "in": sum(n["packets_in"] for n in media),
    "out": sum(n["packets_out"] for n in media),
    "cm": {n["name"]: n["media_sessions"] for n in s["nodes"]},
    "node": {n["name"]: n["node_sessions"] for n in s["nodes"]},
    "in_step": {n["name"]: n["in_step"] for n in s["nodes"]},
}))
PY
  fi
  sleep 2
done
wait "$LOAD_PID" || echo "(pbxlab load exited $?)"
kill -INT "$CLUSTER_PID" 2>/dev/null || true
wait "$CLUSTER_PID" || true
CLUSTER_PID=

TICKS=$(getconf CLK_TCK)
python3 - "$WORK" "$CEILING" "$TICKS" <<'PY'
import json, sys
work, ceiling, ticks = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
load = json.load(open(f"{work}/load.json"))
cluster = json.load(open(f"{work}/cluster.json"))
samples = [json.loads(l) for l in open(f"{work}/samples") if l.strip()]
rtp_cpu, nodes_cpu, cm_cpu = (int(x) / ticks for x in open(f"{work}/cpu").read().split())
peak_in = peak_out = 0.0
for a, b in zip(samples, samples[1:]):
    dt = b["t"] - a["t"]
    if dt > 0:
        peak_in = max(peak_in, (b["in"] - a["in"]) / dt)
        peak_out = max(peak_out, (b["out"] - a["out"]) / dt)
compared = [(s, n) for s in samples for n in s["cm"] if s["in_step"][n]]
mismatched = [(round(s["t"], 1), n, s["cm"][n], s["node"][n]) for s, n in compared if s["cm"][n] != s["node"][n]]
worst = max((abs(c - d) for _, _, c, d in mismatched), default=0)
media = [n for n in cluster["nodes"] if n["role"] == "media"]
handled = sum(n["packets_in"] + n["packets_out"] for n in media) / 1e6
rtp = load["rtp"]
calls = load["calls"]
down = [e for e in cluster["events"] if " down" in e]
print()
print(f"calls               {calls['attempted']} attempted, {calls['failed']} failed; registrations {load['registrations']['attempted']}, {load['registrations']['failed']} failed")
print(f"packets/s at nodes  {peak_in:,.0f} in (generator -> nodes), {peak_out:,.0f} out (nodes -> generator), peak of 2 s samples")
print(f"loopback ceiling    {ceiling:,.0f}/s (GSO+GRO); the run's peak both ways is {(peak_in + peak_out) / ceiling:.1%} of it")
print(f"media packets       {handled:.1f} M handled at the nodes (in + out); generator sent {rtp['packets_sent']:,}, received {rtp['packets_received']:,}")
print(f"loss                {rtp['loss_fraction']:.4%} (RFC 3550), {rtp['unreceived_fraction']:.4%} of sent not received; jitter p99 {rtp['jitter_p99_us'] / 1000:.2f} ms")
mos = rtp.get("mos") or {}
if mos.get("streams"):
    print(f"MOS (E-model)       p1 {mos['p1']:.2f}, p5 {mos['p5']:.2f}, p50 {mos['p50']:.2f}, min {mos['min']:.2f} over {mos['streams']:,} streams; R mean {rtp['r_factor_mean']:.1f}; silent legs {mos['silent_streams']}, late packets {mos['late_packets']:,}")
msgs = load.get("messages") or {}
resent = sum(c["retransmitted"] for k, c in msgs.items() if k != "unexpected")
print(f"peak concurrent     {load.get('peak_concurrent_calls', 0):,} calls; achieved {load.get('call_rate_per_s', 0):.1f} calls/s; SIP retransmissions {resent:,}, unexpected {msgs.get('unexpected', 0):,}")
print(f"CPU s per M packets RTP worker {rtp_cpu / handled:.3f}, node thread {nodes_cpu / handled:.3f}, Call Manager {cm_cpu / handled:.3f}  (CPU s: {rtp_cpu:.1f}, {nodes_cpu:.1f}, {cm_cpu:.1f})")
print(f"servers marked down {len(down)}" + (": " + "; ".join(down) if down else ""))
same = "equal to the Call Manager's anchored sessions" if not mismatched else f"{len(mismatched)} differ from the Call Manager's (by at most {worst}; e.g. {mismatched[:3]})"
print(f"node sessions       {same} in {len(compared)} of {sum(len(s['cm']) for s in samples)} node samples (the others had commands in flight); at the end (anchored/node): " + ", ".join(f"{n['name']} {n['media_sessions']}/{n['node_sessions']}" for n in media))
for d in load["emulator"] + cluster["emulator"]:
    print(f"lateness            {d['driver']}: worst {d['worst_ms']:.1f} ms, {d['behind']} times past 50 ms, kernel drops {d['kernel_drops']}")
PY
