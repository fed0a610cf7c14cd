"""make bench: up, status, a converged up and down under the harness's latency model.

Prints, per command: wall time, the critical path of its dependency graph (from the step
timings it wrote, under the same model), their ratio, what one-step-at-a-time would take,
and the API calls by service; for status the sum of its calls' durations (a sequential
client) against its wall time; for waits, how far past readiness the tool noticed.
Writes the same figures to bench/results.json for run-to-run comparison.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))


def critical_path(timings):
    """Longest chain of step durations through the `after` edges."""
    by_step = {t["step"]: t for t in timings}
    memo = {}

    def longest(step):
        if step not in memo:
            t = by_step[step]
            memo[step] = (t["finish"] - t["start"]) + max((longest(d) for d in t["after"] if d in by_step), default=0.0)
        return memo[step]

    return max((longest(s) for s in by_step), default=0.0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.05, help="model time factor (0.05 = 1/20 of AWS's durations)")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "gitlab-provision"))
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="gp-bench-")
    capture = os.path.join(work, "capture.jsonl")
    emulator = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "harness", "emulator.py"), "--capture", capture, "--model-scale", str(args.scale)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    banner = json.loads(emulator.stdout.readline())
    open(os.path.join(work, "aws-config"), "w").close()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": work,
        "AWS_ENDPOINT_URL": banner["endpoint"], "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.path.join(work, "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": os.path.join(work, "aws-config"),
    }

    def calls_since(offset):
        with open(capture) as f:
            lines = f.readlines()[offset:]
        calls = [json.loads(line) for line in lines]
        return calls, offset + len(lines)

    def durations_since(offset):
        path = capture + ".durations"
        with open(path) as f:
            lines = f.readlines()[offset:]
        return [float(line.split()[1]) for line in lines], offset + len(lines)

    results = {"scale": args.scale}
    offset = dur_offset = 0

    def run(name, argv, timings=None):
        nonlocal offset, dur_offset
        started = time.monotonic()
        proc = subprocess.run([args.binary, *argv], cwd=work, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr}")
        calls, offset = calls_since(offset)
        durations, dur_offset = durations_since(dur_offset)
        row = {
            "wall_s": round(wall, 3),
            "api_calls": len(calls),
            "mutating_calls": sum(c["mutating"] for c in calls),
            "calls_by_service": dict(sorted(collections.Counter(c["service"] for c in calls).items())),
            "sum_of_call_durations_s": round(sum(durations), 3),
        }
        if timings:
            with open(os.path.join(work, timings)) as f:
                steps = json.load(f)["timings"]
            engine_wall = max((t["finish"] for t in steps), default=0.0)
            path = critical_path(steps)
            row.update({
                "engine_wall_s": round(engine_wall, 3),
                "critical_path_s": round(path, 3),
                "wall_over_critical_path": round(engine_wall / path, 3) if path else None,
                "one_step_at_a_time_s": round(sum(t["finish"] - t["start"] for t in steps), 3),
                "steps": {t["step"]: round(t["finish"] - t["start"], 3) for t in steps},
            })
            row["speedup_over_serial"] = round(row["one_step_at_a_time_s"] / engine_wall, 2) if engine_wall else None
        results[name] = row
        return proc

    run("up", ["up", "--stack", "bench", "--allowed-cidr", "203.0.113.0/24", "--timings", "up.json"], "up.json")
    run("status", ["status", "--stack", "bench", "--json"])
    noop = run("noop_up", ["up", "--stack", "bench", "--allowed-cidr", "203.0.113.0/24", "--timings", "noop.json"], "noop.json")
    with open(os.path.join(work, "state", "bench.json")) as f:
        results["noop_up"]["recorded_resources"] = len(json.load(f)["resources"])
    run("down", ["down", "--stack", "bench", "--yes", "--timings", "down.json"], "down.json")
    # The same, one operation at a time (--parallel 1): the schedule the concurrency is measured against.
    run("serial_up", ["up", "--parallel", "1", "--stack", "serial", "--allowed-cidr", "203.0.113.0/24", "--timings", "sup.json"], "sup.json")
    run("serial_status", ["status", "--parallel", "1", "--stack", "serial", "--json"])
    run("serial_down", ["down", "--parallel", "1", "--stack", "serial", "--yes", "--timings", "sdown.json"], "sdown.json")
    for name in ("up", "down"):
        serial = results[f"serial_{name}"]["engine_wall_s"]
        results[name]["one_at_a_time_measured_s"] = serial
        results[name]["speedup_over_one_at_a_time"] = round(serial / results[name]["engine_wall_s"], 2)
    results["status"]["one_at_a_time_measured_s"] = results["serial_status"]["wall_s"]
    results["status"]["speedup_over_one_at_a_time"] = round(results["serial_status"]["wall_s"] / results["status"]["wall_s"], 2)
    emulator.stdin.close()
    emulator.wait(timeout=10)

    from emulator import DURATIONS  # the model's own numbers, for the waiters' overshoot

    modelled = {"nat-gateway": "nat_gateway", "load-balancer": "load_balancer", "mount-targets": "mount_target"}
    results["waits"] = {
        step: {
            "modelled_s": round(DURATIONS[kind] * args.scale, 3),
            "observed_s": results["up"]["steps"][step],
            "noticed_after_ready_s": round(results["up"]["steps"][step] - DURATIONS[kind] * args.scale, 3),
        }
        for step, kind in modelled.items()
        if step in results["up"]["steps"]
    }

    print(f"latency model: AWS durations x {args.scale} (see tests/harness/emulator.py)")
    def num(value, fmt="{:.2f}"):
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    print(f"{'command':<10} {'wall s':>8} {'crit. path s':>13} {'ratio':>6} {'1-at-a-time s':>14} {'x faster':>9} {'calls':>6} {'mutating':>9}  by service")
    for name in ("up", "down", "status", "noop_up"):
        r = results[name]
        print(
            f"{name:<10} {num(r.get('engine_wall_s', r['wall_s'])):>8} {num(r.get('critical_path_s')):>13} "
            f"{num(r.get('wall_over_critical_path')):>6} {num(r.get('one_at_a_time_measured_s')):>14} {num(r.get('speedup_over_one_at_a_time')):>9} "
            f"{r['api_calls']:>6} {r['mutating_calls']:>9}  {r['calls_by_service']}"
        )
    print("(wall: the engine's, from the step timings; status has none, so the whole process. 1-at-a-time: the same command with --parallel 1)")
    print(f"no-op up: {results['noop_up']['api_calls']} calls for {results['noop_up']['recorded_resources']} recorded resources, {results['noop_up']['mutating_calls']} mutating")
    for step, w in results["waits"].items():
        print(f"wait {step:<14} ready after {w['modelled_s']:.2f}s, noticed after {w['observed_s']:.2f}s (+{w['noticed_after_ready_s']:.2f}s)")
    out = os.path.join(ROOT, "bench", "results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
