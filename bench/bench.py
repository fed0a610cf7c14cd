"""make bench: up, status, a converged up and down under the harness's strict model, then the
time to a usable GitLab.

Part 1 (AWS's durations x --scale, a 50 ms round trip per call): per command, wall time, the
critical path of its dependency graph (from the step timings it wrote, so it includes every
wait: pending resources on up, lingering interfaces and draining tasks on down), their ratio,
the same command one step at a time, the API calls by service; for waits, how far past
readiness the tool noticed; for down, how long after AWS released an interface the delete it
blocked went through.
Part 2 (--usable-scale, round trips scaled too): `up --wait` from nothing to a GitLab the load
balancer reports healthy, with the Fargate task's start, the image pull and GitLab's first boot
on EFS modelled, converted back to AWS seconds and set against the reference CloudFormation
deployment's 1,003.7 s; then a wake, and a consistent backup's downtime (stop, job, start).
Part 3 (the same scale): the same `up --wait` with `database = "rds"`: time to healthy, the
critical path through the RDS instance, what it adds; then a backup on RDS (no downtime).
Writes the figures to bench/results.json for run-to-run comparison.
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


def start_emulator(work, scale, latency):
    capture = os.path.join(work, "capture.jsonl")
    emulator = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "harness", "emulator.py"), "--capture", capture,
         "--model-scale", str(scale), "--api-latency", str(latency)],
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
    return emulator, capture, env


def released_to_deleted(capture):
    """For each delete the strict model refused while an interface held what it deletes (a
    subnet, a security group): how long after the last such interface was released the delete
    went through, i.e. how quickly down notices."""
    import re

    with open(capture) as f:
        entries = [json.loads(line) for line in f]
    gaps = {}
    for i, e in enumerate(entries):
        if e.get("refused") != "DependencyViolation":
            continue
        later = next((x for x in entries[i + 1:] if x["action"] == e["action"] and x["body"] == e["body"] and not x.get("refused")), None)
        if later is None or id(later) in gaps:
            continue
        held = set(re.findall(r"\b(?:subnet|sg)-[0-9a-f]+\b", e["body"]))
        releases = [x["at"] for x in entries
                    if x.get("rule") == "interface-released" and x["at"] <= later["at"]
                    and held & set(re.findall(r"\b(?:subnet|sg)-[0-9a-f]+\b", x.get("detail", "")))]
        if held and releases:
            gaps[id(later)] = later["at"] - max(releases)
    values = list(gaps.values())
    return {
        "blocked_deletes": len(values),
        "mean_s": round(sum(values) / len(values), 3) if values else None,
        "max_s": round(max(values), 3) if values else None,
    }


def first_healthy(capture, since):
    """The first moment (epoch seconds) after `since` that the strict model's load balancer saw a
    target healthy: its health-check events carry it, whenever the capture recorded them."""
    found = None
    with open(capture) as f:
        for line in f:
            entry = json.loads(line)
            if entry.get("rule") == "health-check" and entry.get("detail", "").startswith("{"):
                at = json.loads(entry["detail"])["healthy_at"]
                if at >= since:
                    found = at if found is None else min(found, at)
    return found


# The stack's target group (src/steps/load_balancer.rs): checked every 10 s, healthy after 2.
HEALTH_CHECK_INTERVAL = 10
HEALTHY_THRESHOLD = 2


def usable_gitlab(args):
    """`up --wait` from nothing until the load balancer reports GitLab healthy."""
    from strict import RULES

    work = tempfile.mkdtemp(prefix="gp-bench-usable-")
    # Round trips scaled like everything else, so wall / scale is AWS time.
    emulator, capture, env = start_emulator(work, args.usable_scale, 0.05 * args.usable_scale)
    # moto loads each service's backend on its first call (hundreds of milliseconds each, which
    # this scale would turn into seconds of "AWS time"); AWS has no such warm-up. A `status` of a
    # stack that does not exist looks for its resources in every service first.
    subprocess.run([args.binary, "status", "--stack", "warm-up"], cwd=work, env=env, capture_output=True, text=True)
    started, up_epoch = time.monotonic(), time.time()
    proc = subprocess.run([args.binary, "up", "--wait", "--stack", "usable", "--allowed-cidr", "203.0.113.0/24"],
                          cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"up --wait failed:\n{proc.stderr}")
    # A wake: GitLab stopped by `sleep`, then `wake --wait` until the load balancer sees it healthy.
    tool = lambda *a: subprocess.run([args.binary, *a, "--stack", "usable"], cwd=work, env=env, capture_output=True, text=True)  # noqa: E731
    slept = tool("sleep")
    if slept.returncode != 0:
        sys.exit(f"sleep failed:\n{slept.stderr}")
    started, started_epoch = time.monotonic(), time.time()
    woke = tool("wake", "--wait")
    wake_wall = time.monotonic() - started
    # When the model's load balancer first saw a task healthy (its health-check events), after
    # `up` began and after `wake` began.
    first_boot_healthy_at = first_healthy(capture, up_epoch)
    healthy_at = first_healthy(capture, started_epoch)
    if woke.returncode != 0:
        sys.exit(f"wake --wait failed:\n{woke.stderr}")
    # A consistent backup of the running GitLab: stopped, copied by an AWS Backup job, started
    # and healthy again. Its phases come from the JSON events, the downtime from the result.
    backup_epoch = time.time()
    backup = tool("backup", "--yes", "--json")
    if backup.returncode != 0:
        sys.exit(f"backup failed:\n{backup.stderr}")
    # `backup` starts GitLab again and returns; users are back once it is healthy.
    back = tool("wake", "--wait")
    if back.returncode != 0:
        sys.exit(f"wake --wait after the backup failed:\n{back.stderr}")
    back_at = first_healthy(capture, backup_epoch)
    docs = [json.loads(line) for line in backup.stdout.splitlines() if line.startswith("{")]
    phases = {d["step"]: d["seconds"] / args.usable_scale for d in docs
              if d.get("event") == "finished" and d.get("seconds") is not None}
    downtime = next((d.get("downtime_seconds") for d in docs if "recovery_point" in d), None)
    emulator.stdin.close()
    emulator.wait(timeout=10)
    # What AWS itself takes on the way, whatever the tool does: the network and the file system
    # (the longest of the load balancer, the NAT instance and mount targets, then the
    # initializer), then the task's start, the pull, the boot and the target group's passing
    # checks (half an interval on average to the first, src/steps/load_balancer.rs: every 10 s,
    # healthy after 2).
    seconds = {rule: RULES[rule][0] for rule in RULES if RULES[rule][0]}
    checks = (HEALTHY_THRESHOLD - 0.5) * HEALTH_CHECK_INTERVAL
    start = seconds["task-provisioning"] + seconds["image-pull"]
    # (the load balancer provisions meanwhile: GitLab's task does not wait for it.)
    floor = (max(seconds["instance-pending"], seconds["mount-target-creating"] + seconds["function-pending"])
             + start + seconds["gitlab-first-boot"] + checks)
    restart = start + seconds["gitlab-boot"]
    return {"scale": args.usable_scale, "wall_s": round(wall, 2), "aws_equivalent_s": round(wall / args.usable_scale, 1),
            "modelled_floor_s": floor, "reference_cdk_s": 1003.7,
            "ratio_to_reference": round(wall / args.usable_scale / 1003.7, 3),
            "healthy_aws_s": round((first_boot_healthy_at - up_epoch) / args.usable_scale, 1) if first_boot_healthy_at else None,
            "noticed_after_healthy_real_s": round(up_epoch + wall - first_boot_healthy_at, 2) if first_boot_healthy_at else None,
            "wake_aws_equivalent_s": round(wake_wall / args.usable_scale, 1), "wake_restart_s": restart,
            "wake_over_restart_s": round(wake_wall / args.usable_scale - restart, 1),
            "wake_healthy_aws_s": round((healthy_at - started_epoch) / args.usable_scale, 1) if healthy_at else None,
            "wake_noticed_after_healthy_real_s": round(started_epoch + wake_wall - healthy_at, 2) if healthy_at else None,
            "backup_downtime_aws_s": round(downtime / args.usable_scale, 1) if downtime is not None else None,
            "backup_unavailable_aws_s": round((back_at - backup_epoch) / args.usable_scale, 1) if back_at else None,
            "backup_phases_aws_s": {step: round(seconds, 1) for step, seconds in phases.items()}}


def usable_on_rds(args):
    """`up --wait` of a stack with its database on RDS, its critical path, and a backup of it."""
    from strict import RULES

    work = tempfile.mkdtemp(prefix="gp-bench-rds-")
    emulator, capture, env = start_emulator(work, args.usable_scale, 0.05 * args.usable_scale)
    subprocess.run([args.binary, "status", "--stack", "warm-up"], cwd=work, env=env, capture_output=True, text=True)
    timings = os.path.join(work, "timings.json")
    started, up_epoch = time.monotonic(), time.time()
    proc = subprocess.run([args.binary, "up", "--wait", "--stack", "pg", "--allowed-cidr", "203.0.113.0/24",
                           "--database", "rds", "--timings", timings], cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"up --wait --database rds failed:\n{proc.stderr}")
    healthy_at = first_healthy(capture, up_epoch)
    with open(timings) as f:
        steps = json.load(f)["timings"]
    by_step = {t["step"]: t for t in steps}
    chain, step = [], max(by_step, key=lambda k: by_step[k]["finish"])
    # The chain that ended last, each step after the one of its `after` that finished last.
    while step:
        chain.append(step)
        before = [d for d in by_step[step]["after"] if d in by_step]
        step = max(before, key=lambda d: by_step[d]["finish"]) if before else None
    backup_started = time.monotonic()
    backup = subprocess.run([args.binary, "backup", "--stack", "pg", "--json"], cwd=work, env=env, capture_output=True, text=True)
    backup_wall = time.monotonic() - backup_started
    if backup.returncode != 0:
        sys.exit(f"backup on RDS failed:\n{backup.stderr}")
    docs = [json.loads(line) for line in backup.stdout.splitlines() if line.startswith("{")]
    taken = next((d for d in docs if "recovery_point" in d), {})
    emulator.stdin.close()
    emulator.wait(timeout=10)
    seconds = {rule: RULES[rule][0] for rule in RULES if RULES[rule][0]}
    checks = (HEALTHY_THRESHOLD - 0.5) * HEALTH_CHECK_INTERVAL
    start = seconds["task-provisioning"] + seconds["image-pull"]
    network = max(seconds["instance-pending"], seconds["mount-target-creating"] + seconds["function-pending"])
    floor = max(network, seconds["db-instance-creating"]) + start + seconds["gitlab-first-boot"] + checks
    return {"scale": args.usable_scale, "wall_s": round(wall, 2), "aws_equivalent_s": round(wall / args.usable_scale, 1),
            "healthy_aws_s": round((healthy_at - up_epoch) / args.usable_scale, 1) if healthy_at else None,
            "modelled_floor_s": floor, "rds_adds_to_floor_s": max(0, seconds["db-instance-creating"] - network),
            "database_step_aws_s": round((by_step["database"]["finish"] - by_step["database"]["start"]) / args.usable_scale, 1),
            "critical_chain": list(reversed(chain)),
            "backup_aws_s": round(backup_wall / args.usable_scale, 1),
            "backup_downtime_s": taken.get("downtime_seconds"), "backup_database_snapshot": taken.get("database_snapshot")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.05, help="model time factor (0.05 = 1/20 of AWS's durations)")
    parser.add_argument("--usable-scale", type=float, default=0.1, help="time factor of the up --wait run")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "gitlab-provision"))
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="gp-bench-")
    emulator, capture, env = start_emulator(work, args.scale, 0.05)

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
    run("noop_up", ["up", "--stack", "bench", "--allowed-cidr", "203.0.113.0/24", "--timings", "noop.json"], "noop.json")
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
    results["down"]["released_to_deleted"] = released_to_deleted(capture)
    emulator.stdin.close()
    emulator.wait(timeout=10)

    from strict import RULES  # the model's own numbers, for the waiters' overshoot

    modelled = {"nat-gateway": "nat-gateway-pending", "nat-instance": "instance-pending", "mount-targets": "mount-target-creating"}  # the load balancer is not waited for
    results["waits"] = {
        step: {
            "modelled_s": round(RULES[rule][0] * args.scale, 3),
            "observed_s": results["up"]["steps"][step],
            "noticed_after_ready_s": round(results["up"]["steps"][step] - RULES[rule][0] * args.scale, 3),
        }
        for step, rule in modelled.items()
        if step in results["up"]["steps"]
    }
    results["usable"] = usable_gitlab(args)
    results["usable_rds"] = usable_on_rds(args)

    print(f"strict model: AWS durations x {args.scale}, {0.05 * 1000:.0f} ms per call (see tests/harness/strict.py)")
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
    r = results["down"]["released_to_deleted"]
    if r["blocked_deletes"]:
        print(f"down: {r['blocked_deletes']} deletes waited for released interfaces; noticed {r['mean_s']:.2f}s after release on average, {r['max_s']:.2f}s at most")
    u = results["usable"]
    print(f"up --wait to a healthy GitLab: {u['wall_s']:.1f}s at x{u['scale']} = {u['aws_equivalent_s']:.0f} s of AWS time "
          f"(modelled floor {u['modelled_floor_s']:.0f} s; reference CDK deployment 1003.7 s: {u['ratio_to_reference']:.2f}x)")
    if u["healthy_aws_s"] is not None:
        print(f"  of which: healthy at the load balancer after {u['healthy_aws_s']:.0f} s of AWS time "
              f"({u['healthy_aws_s'] / 1003.7:.2f}x the reference), noticed by the tool {u['noticed_after_healthy_real_s']:.2f} s "
              f"of real time later (its polling, real seconds at any scale)")
    print(f"wake --wait to a healthy GitLab: {u['wake_aws_equivalent_s']:.0f} s of AWS time "
          f"(a restart, modelled: {u['wake_restart_s']:.0f} s; {u['wake_over_restart_s']:+.0f} s)")
    if u["wake_healthy_aws_s"] is not None:
        print(f"  of which: healthy at the load balancer after {u['wake_healthy_aws_s']:.0f} s of AWS time "
              f"({u['wake_healthy_aws_s'] - u['wake_restart_s']:+.0f} s over the restart), noticed by the tool "
              f"{u['wake_noticed_after_healthy_real_s']:.2f} s of real time later (its polling, real seconds at any scale)")
    if u["backup_downtime_aws_s"] is not None:
        phases = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in u["backup_phases_aws_s"].items())
        print(f"consistent backup of the running GitLab: stopped for {u['backup_downtime_aws_s']:.0f} s of AWS time ({phases})")
    if u.get("backup_unavailable_aws_s") is not None:
        print(f"  unavailable from the backup's start until healthy again: {u['backup_unavailable_aws_s']:.0f} s of AWS time "
              "(the task's stop, the job, GitLab's restart)")
    r = results["usable_rds"]
    print(f"up --wait with database = \"rds\": {r['aws_equivalent_s']:.0f} s of AWS time, healthy after "
          f"{r['healthy_aws_s']} s (modelled floor {r['modelled_floor_s']:.0f} s; the instance's creation adds "
          f"{r['rds_adds_to_floor_s']:.0f} s to it; the database step took {r['database_step_aws_s']:.0f} s)")
    print(f"  critical chain: {' -> '.join(r['critical_chain'])}")
    print(f"backup on RDS: {r['backup_aws_s']:.0f} s of AWS time, GitLab stopped for "
          f"{r['backup_downtime_s'] if r['backup_downtime_s'] is not None else 'nothing'}; snapshot {r['backup_database_snapshot']}")
    out = os.path.join(ROOT, "bench", "results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
