"""The loss model of benches/planner/loss.toml in SimPy, written as SimPy's documentation writes
such models: a source process drawing Poisson gaps, one process per call holding a slot of a
Resource, blocked at once when every slot is taken. Prints the calls offered after warm-up, blocking, wall and CPU seconds.

    python3 benches/planner/loss_simpy.py HOURS
"""
import random
import sys
import time

import simpy

SLOTS = 120
RATE = 0.611111  # calls per second
HOLD_S = 180.0
WARMUP_S = 3600.0


def main(hours: float) -> None:
    env = simpy.Environment()
    slots = simpy.Resource(env, capacity=SLOTS)
    rng = random.Random(11)
    tally = {"offered": 0, "blocked": 0}

    def call(env):
        with slots.request() as req:
            yield req
            yield env.timeout(rng.expovariate(1.0 / HOLD_S))

    def source(env):
        while True:
            yield env.timeout(rng.expovariate(RATE))
            counted = env.now >= WARMUP_S
            if slots.count >= SLOTS:
                if counted:
                    tally["offered"] += 1
                    tally["blocked"] += 1
                continue
            if counted:
                tally["offered"] += 1
            env.process(call(env))

    env.process(source(env))
    wall, cpu = time.perf_counter(), time.process_time()
    env.run(until=hours * 3600.0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    blocking = tally["blocked"] / max(tally["offered"], 1)
    print(f"{tally['offered']} {blocking:.5f} {wall:.3f} {cpu:.3f}")


if __name__ == "__main__":
    main(float(sys.argv[1]))
