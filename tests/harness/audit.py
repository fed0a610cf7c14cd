"""`make audit`: Prowler against the stack gitlab-provision builds, on the emulator.

For each profile (the default, `--hardening strict`, and `rds-s3`: the database on RDS and the
objects in S3, with the default hardening):

1. start the emulator (moto behind the harness's proxy, `emulator.py`, from the emulator's own
   virtualenv) and create in it a public hosted zone for example.com and an IAM user whose keys
   the tool and Prowler use (see operator_credentials);
2. run the real binary: `up` an HTTPS + SSH stack, in a fresh working directory (so ./state is
   new), with the environment the end-to-end tests give it (tests/common/mod.rs);
3. run Prowler (this script's own virtualenv) against the same endpoint (AWS_ENDPOINT_URL);
4. keep the findings on the stack's resources: ids and ARNs recorded in the state file, the
   resources AWS creates inside the stack's VPC (its default security group and network ACL, its
   main route table), and anything whose name or ARN contains the stack name (or that carries
   the stack's tag). Findings about the account as a whole (CloudTrail, the password policy...)
   are reported apart as "account" and never fail the audit; the rest (moto's default VPC,
   AMIs, snapshots...) is dropped, and only counted.

Then it prints every FAIL on the stack, the counts per profile and severity, writes
target/audit/summary.json, and exits 1 when a high or critical FAIL on the stack is not in the
README's "### Accepted findings" table (the single source of what is accepted), 2 when a
profile could not be audited (the tool's `up` or Prowler failed). A profile the binary does not
know yet (no `--hardening` flag) is reported as unavailable and skipped, unless it was asked
for by name (`--profile strict`), which makes it an error.

Standard library only, plus boto3 from Prowler's virtualenv (for the hosted zone and to list the
VPC's default resources).

    .venv-audit/bin/python tests/harness/audit.py [--profile default|strict|rds-s3 ...]
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The stack under audit. Distinctive, so "name contains the stack name" matches only it.
STACK = "gl-audit"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's
DOMAIN, SUB_DOMAIN, ALLOWED_CIDR = "example.com", "gitlab", "203.0.113.0/24"

# The profiles: extra arguments to `up`.
PROFILES = {
    "default": [],
    "strict": ["--hardening", "strict"],
    # The roads grown-up teams take: PostgreSQL on RDS, objects in S3 (the default hardening).
    "rds-s3": ["--database", "rds", "--object-storage"],
}

# What Prowler scans: the services the stack uses, and the account-wide ones (CloudTrail, KMS,
# WAF, S3) its findings can depend on. ("lambda" is "awslambda" to Prowler; CloudWatch Logs
# checks are under "cloudwatch".)
SERVICES = ["ec2", "vpc", "efs", "elbv2", "ecs", "secretsmanager", "backup", "cloudwatch", "iam", "awslambda", "kms",
            "wafv2", "cloudtrail", "s3", "acm", "rds"]

SEVERITIES = ["critical", "high", "medium", "low", "informational"]
GATING = {"critical", "high"}  # a FAIL of these fails the audit unless accepted in the README

# Seconds before we give up on one step.
UP_TIMEOUT, PROWLER_TIMEOUT = 900, 1800


def log(message):
    print(f"[audit {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# The README's table of accepted findings.

def accepted_findings(readme_path):
    """{check id: {"why": ..., "change": ...}} from the table under `### Accepted findings`.
    Rows are `| `check_id` | why it does not apply | what would change that |`."""
    with open(readme_path) as f:
        lines = f.read().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "### Accepted findings")
    except StopIteration:
        raise SystemExit(f"{readme_path} has no '### Accepted findings' heading (the audit's table of accepted findings)")
    accepted = {}
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break  # the next section
        if not line.strip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("Check", "") or set(cells[0]) <= set("-: "):
            continue  # the header and the separator
        m = re.fullmatch(r"`([a-z0-9_]+)`", cells[0])
        if not m:
            raise SystemExit(f"{readme_path}: accepted finding row without a `check_id` in its first column: {line}")
        accepted[m.group(1)] = {"why": cells[1] if len(cells) > 1 else "", "change": cells[2] if len(cells) > 2 else ""}
    return accepted


# --------------------------------------------------------------------------------------------
# The emulator, the hosted zone and the tool.

class Emulator:
    """emulator.py in a child process: it prints one JSON line with its endpoint, then serves
    until its stdin closes."""

    def __init__(self, python, workdir):
        self.stderr = open(os.path.join(workdir, "emulator.stderr"), "w")
        self.capture = os.path.join(workdir, "calls.jsonl")
        self.proc = subprocess.Popen([python, os.path.join(ROOT, "tests", "harness", "emulator.py"), "--capture", self.capture],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        banner = self.proc.stdout.readline()
        if not banner:
            self.close()
            raise RuntimeError(f"the emulator did not start: see {self.stderr.name}")
        self.endpoint = json.loads(banner)["endpoint"]

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()

    def refusals_since(self, since):
        """What the harness's strict model refused (or failed at) after `since`: {action: count}."""
        refused = Counter()
        with open(self.capture) as f:
            for line in f:
                entry = json.loads(line)
                if entry.get("at", 0) >= since and (entry.get("refused") or entry.get("rule") == "model-error"):
                    refused[f"{entry.get('service')} {entry.get('action')}: {entry.get('refused') or entry.get('rule')}"] += 1
        return dict(refused)


def aws_env(endpoint, workdir, credentials):
    """The environment the tests give the tool (tests/common/mod.rs, Tool::command), for the tool
    and for Prowler alike: the emulator's endpoint, the operator's keys, empty AWS config files,
    nothing inherited from the caller's AWS_* variables."""
    config = os.path.join(workdir, "aws-config")
    open(config, "w").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    key_id, secret = credentials
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION=REGION,
               AWS_DEFAULT_REGION=REGION,  # boto3 (Prowler) reads this one, not AWS_REGION
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=config, AWS_SHARED_CREDENTIALS_FILE=config)
    return env


def boto3_client(service, endpoint):
    import boto3  # from Prowler's virtualenv

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test",
                        aws_secret_access_key="test")


def operator_credentials(endpoint):
    """Keys of an IAM user made in the emulator, for the tool and Prowler. With the tests' dummy
    keys ("test") moto names the caller `arn:aws:sts::<account>:user/moto`, a shape AWS never
    returns; the tool writes its caller into the root secret's policy, and Prowler rejects that
    ARN there (secretsmanager_has_restrictive_resource_policy), a finding of the emulator, not of
    the product. A real user's keys make the caller `arn:aws:iam::<account>:user/audit-operator`."""
    iam = boto3_client("iam", endpoint)
    iam.create_user(UserName="audit-operator")
    key = iam.create_access_key(UserName="audit-operator")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def create_hosted_zone(endpoint):
    """A public hosted zone for the domain, as the HTTPS tests make one (tests/stack.rs): its id."""
    zone = boto3_client("route53", endpoint).create_hosted_zone(Name=DOMAIN, CallerReference=f"audit-{time.time()}")
    return zone["HostedZone"]["Id"].split("/")[-1]


def up_help(binary):
    return subprocess.run([binary, "up", "--help"], capture_output=True, text=True, timeout=60).stdout


def run_up(binary, workdir, env, zone, extra):
    """`up` of an HTTPS + SSH stack; (exit code, seconds, the command line). Its output goes to
    up.stdout and up.stderr."""
    args = [binary, "up", "--stack", STACK, "--domain-name", DOMAIN, "--sub-domain", SUB_DOMAIN, "--hosted-zone-id", zone,
            "--ssh", "--allowed-cidr", ALLOWED_CIDR, "--yes", "--color", "never", *extra]
    tool_dir = os.path.join(workdir, "tool")  # the tool's working directory: ./state lands here
    os.makedirs(tool_dir)
    start = time.monotonic()
    with open(os.path.join(workdir, "up.stdout"), "w") as out, open(os.path.join(workdir, "up.stderr"), "w") as err:
        rc = subprocess.run(args, cwd=tool_dir, env=env, stdout=out, stderr=err, timeout=UP_TIMEOUT).returncode
    return rc, time.monotonic() - start, " ".join(args[1:])


# --------------------------------------------------------------------------------------------
# What belongs to the stack.

def stack_identifiers(state, endpoint):
    """{identifier: why it is the stack's}: every resource's id and ARN from the state file, and
    the resources AWS made inside the stack's VPC without the tool asking (the default security
    group and network ACL, the main route table), found in the emulator. One id can stand for
    several records (a secret and its policy): "state:root-secret,root-secret-policy"."""
    keys = defaultdict(list)
    vpcs = []
    for key, resource in state.get("resources", {}).items():
        for value in (resource.get("id"), (resource.get("attrs") or {}).get("arn")):
            if value and key not in keys[value]:
                keys[value].append(key)
        if resource.get("kind") == "ec2:vpc" and resource.get("id"):
            vpcs.append(resource["id"])
    ids = {value: "state:" + ",".join(k) for value, k in keys.items()}
    if vpcs:
        ec2 = boto3_client("ec2", endpoint)
        where = [{"Name": "vpc-id", "Values": vpcs}]
        for sg in ec2.describe_security_groups(Filters=where)["SecurityGroups"]:
            ids.setdefault(sg["GroupId"], f"in-vpc:security-group {sg['GroupName']}")
        for acl in ec2.describe_network_acls(Filters=where)["NetworkAcls"]:
            ids.setdefault(acl["NetworkAclId"], "in-vpc:network-acl" + (" (default)" if acl.get("IsDefault") else ""))
        for table in ec2.describe_route_tables(Filters=where)["RouteTables"]:
            ids.setdefault(table["RouteTableId"], "in-vpc:route-table")
    return ids


ARN = re.compile(r"^arn:[^:]*:([^:]*):([^:]*):([^:]*):(.*)$")


def short_resource(uid):
    """A readable resource name: the resource part of an ARN (`security-group/sg-1`)."""
    m = ARN.match(uid)
    resource = m.group(4) if m else uid
    return resource[:-2] if resource.endswith(":*") else resource


def classify(finding, ids, stack):
    """("stack", why) for a finding on the stack's resources, ("account", None) for one about the
    account as a whole, (None, None) for anything else (moto's own default resources)."""
    resource = finding["resources"][0]
    uid = resource.get("uid") or ""
    name = resource.get("name") or ""
    metadata = (resource.get("data") or {}).get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    # The ways Prowler names a resource: the ARN (a log group's with ":*"), the id at its end,
    # the id and ARN of its own model, its name.
    candidates = [uid, uid[:-2] if uid.endswith(":*") else uid, uid.rsplit("/", 1)[-1], name, metadata.get("id"), metadata.get("arn")]
    for candidate in candidates:
        if candidate and candidate in ids:
            return "stack", ids[candidate]
    if stack in uid or stack in name:
        return "stack", "name"
    if f"gitlab-provision:stack:{stack}" in (resource.get("labels") or []):
        return "stack", "tag"
    # Account-wide checks report on a resource-less ARN ("arn:aws:cloudtrail:us-east-1:<acct>:trail",
    # "...:password-policy"), the account itself, or an AWS-managed policy (support role...).
    if uid == ACCOUNT:
        return "account", None
    m = ARN.match(uid)
    if m:
        account, rest = m.group(3), m.group(4)
        if account == "aws" or (account == ACCOUNT and re.fullmatch(r"[a-z0-9-]+", rest)):
            return "account", None
    return None, None


# --------------------------------------------------------------------------------------------
# Prowler.

def prowler_version(prowler):
    out = subprocess.run([prowler, "--version"], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip()


def run_prowler(prowler, outdir, env):
    """The scan: every FAIL written, exit code 3 off (-z), unused resources evaluated too (under
    moto little is "in use": without it Prowler skips VPCs, subnets, groups and ACLs without
    interfaces), collection errors to prowler.log. AWS_ENDPOINT_URL (in `env`) points every boto3
    client, STS included, at the emulator.
    (exit code, seconds, OCSF findings)."""
    args = [prowler, "aws", "-f", REGION, "--service", *SERVICES, "-M", "json-ocsf", "csv", "-o", outdir, "-F", "scan",
            "--scan-unused-services", "-b", "-z", "--no-color", "--log-level", "ERROR", "--log-file",
            os.path.join(outdir, "prowler.log")]
    os.makedirs(outdir)
    start = time.monotonic()
    with open(os.path.join(outdir, "prowler.stdout"), "w") as out, open(os.path.join(outdir, "prowler.stderr"), "w") as err:
        rc = subprocess.run(args, env=env, stdout=out, stderr=err, timeout=PROWLER_TIMEOUT).returncode
    seconds = time.monotonic() - start
    report = os.path.join(outdir, "scan.ocsf.json")
    findings = json.load(open(report)) if os.path.exists(report) else None
    return rc, seconds, findings


def prowler_function(filename, line):
    """The function of Prowler's source holding `filename:line` (the log names only the file and
    line): "_get_role_last_accessed_services"; None when not found."""
    spec = importlib.util.find_spec("prowler")
    if not spec or not spec.submodule_search_locations:
        return None
    for top in spec.submodule_search_locations:
        for folder, _, files in os.walk(os.path.join(top, "providers", "aws")):  # other clouds have an iam_service.py too
            if filename in files:
                with open(os.path.join(folder, filename)) as f:
                    lines = f.read().splitlines()[:line]
                for text in reversed(lines):
                    m = re.match(r"\s*def (\w+)", text)
                    if m:
                        return m.group(1)
                return None
    return None


def prowler_errors(log_path):
    """Prowler's collection errors, grouped: {"file:line function: what": count}. A failed API
    call only means "no resource" to Prowler, so these say what was not evaluated."""
    if not os.path.exists(log_path):
        return {}
    entries = []  # one per log record; a message can span several lines
    with open(log_path) as f:
        for line in f:
            if line.startswith('{"timestamp"'):
                entries.append(line)
            elif entries:
                entries[-1] += line
    errors = Counter()
    for entry in entries:
        m = re.search(r'"filename": "([^":]+):(\d+)".*?"message": "(.*)', entry, re.S)
        if not m:
            continue
        filename, line, message = m.group(1), int(m.group(2)), m.group(3)
        op = re.search(r"calling the (\w+) operation", message)
        kind = re.search(r"(\w+(?:Error|Exception))\[", message)
        what = op.group(1) if op else (kind.group(1) if kind else message.split("\n")[0][:100].rstrip('"}'))
        if "500 Internal Server Error" in message or "(500)" in message:
            what += " (HTTP 500 from the emulator)"
        elif "Could not connect to the endpoint URL" in message:
            what += " (" + message.split("URL: ")[-1].strip('"}\n ')[:100] + ")"
        elif kind:
            what += ": " + message.split("]: ", 1)[-1].split("\n")[0].strip('"} ')[:100]
        function = prowler_function(filename, line)
        errors[f"{filename}:{line}{' ' + function if function else ''}: {what}"] += 1
    return dict(errors)


def emulator_gaps(stderr_path, since_line):
    """What moto could not answer during the scan, from the emulator's stderr after
    `since_line`: {"lookup_events not implemented": count, ...}."""
    gaps = Counter()
    with open(stderr_path) as f:
        lines = f.read().splitlines()[since_line:]
    for text in lines:
        m = re.match(r"NotImplementedError: The (\w+) action has not been implemented", text)
        if m:
            gaps[f"{m.group(1)} not implemented"] += 1
        elif re.match(r"\w+Error: ", text):
            gaps[text[:120]] += 1
    return dict(gaps)


# Emulator gaps that make a check FAIL (or skip a resource) where AWS would not: (what to look
# for among Prowler's errors and moto's gaps, the checks affected, why). A finding of these checks
# is annotated, not dropped: on AWS it may hold.
CAVEATS = [
    ("list_resources_for_web_acl", {"elbv2_waf_acl_attached"},
     "moto does not implement wafv2 ListResourcesForWebACL, so Prowler cannot see a web ACL's load balancers"),
    ("BackupVault", {"backup_vaults_exist", "backup_vaults_encrypted"},
     "moto returns no EncryptionKeyArn for vaults; Prowler's model rejects them, so no vault is seen"),
    ("lookup_events", {"cloudtrail_threat_detection_enumeration", "cloudtrail_threat_detection_privilege_escalation",
                       "cloudtrail_threat_detection_llm_jacking"},
     "moto does not implement CloudTrail LookupEvents"),
]


def caveat(check, evidence):
    for signature, checks, why in CAVEATS:
        if check in checks and signature in evidence:
            return why
    return None


# --------------------------------------------------------------------------------------------
# One profile.

def audit_profile(profile, opts, accepted):
    """Everything for one profile; a dict for summary.json."""
    workdir = os.path.join(opts.out, profile)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    result = {"profile": profile, "up_args": PROFILES[profile], "workdir": os.path.relpath(workdir, ROOT)}
    extra = PROFILES[profile]

    # A flag the binary does not have yet (--hardening is being added): say so, skip the profile.
    help_text = up_help(opts.binary)
    missing = [a for a in extra if a.startswith("--") and a not in help_text]
    if missing:
        result.update(status="unavailable", reason=f"{os.path.relpath(opts.binary, ROOT)} has no {' '.join(missing)} flag "
                      f"(`up --help` does not list it; rebuild once it lands)")
        log(f"{profile}: UNAVAILABLE: {result['reason']}")
        return result

    started = time.monotonic()
    emulator = Emulator(opts.emulator_python, workdir)
    try:
        result["emulator_endpoint"] = emulator.endpoint
        env = aws_env(emulator.endpoint, workdir, operator_credentials(emulator.endpoint))
        zone = create_hosted_zone(emulator.endpoint)

        log(f"{profile}: up (HTTPS on {SUB_DOMAIN}.{DOMAIN}, SSH, {ALLOWED_CIDR}{' ' + ' '.join(extra) if extra else ''})")
        rc, seconds, command = run_up(opts.binary, workdir, env, zone, extra)
        result.update(up_command=f"gitlab-provision {command}", up_seconds=round(seconds, 1), up_exit=rc)
        if rc != 0:
            stderr = open(os.path.join(workdir, "up.stderr")).read()
            clap = re.search(r"^error: (unexpected argument|invalid value).*$", stderr, re.M)
            if clap and any(a in clap.group(0) for a in extra):  # the profile's flag or value is unknown here
                result.update(status="unavailable", reason=f"`up` refused the profile's arguments: {clap.group(0)}")
            else:
                tail = "\n".join(stderr.strip().splitlines()[-8:])
                result.update(status="error", reason=f"`up` exited {rc}; last lines of {workdir}/up.stderr:\n{tail}")
            log(f"{profile}: {result['status'].upper()}: {result['reason']}")
            return result

        state_path = os.path.join(workdir, "tool", "state", f"{STACK}.json")
        state = json.load(open(state_path))
        ids = stack_identifiers(state, emulator.endpoint)
        result["stack_resources"] = len(state.get("resources", {}))

        log(f"{profile}: Prowler {' '.join(SERVICES)} (1-2 minutes)")
        scan_start = time.time()
        with open(emulator.stderr.name) as f:
            stderr_lines = len(f.read().splitlines())  # what the emulator said before the scan
        rc, seconds, findings = run_prowler(opts.prowler, os.path.join(workdir, "prowler"), env)
        result.update(prowler_seconds=round(seconds, 1), prowler_exit=rc,
                      prowler_errors=prowler_errors(os.path.join(workdir, "prowler", "prowler.log")),
                      emulator_gaps=emulator_gaps(emulator.stderr.name, stderr_lines),
                      emulator_refusals_during_scan=emulator.refusals_since(scan_start))
        if rc != 0 or findings is None:
            result.update(status="error", reason=f"Prowler exited {rc}; see {workdir}/prowler/prowler.stderr")
            log(f"{profile}: ERROR: {result['reason']}")
            return result
    finally:
        emulator.close()
    result["seconds"] = round(time.monotonic() - started, 1)

    # Sort the findings: the stack's, the account's, the rest (dropped).
    stack_findings, account_findings, dropped = [], [], Counter()
    seen = set()  # ids and ARNs of the stack that Prowler reported on
    for finding in findings:
        where, why = classify(finding, ids, STACK)
        resource = finding["resources"][0]
        row = {"check": finding["metadata"]["event_code"], "severity": finding.get("severity", "").lower(),
               "status": finding.get("status_code"), "resource": short_resource(resource.get("uid", "")),
               "resource_uid": resource.get("uid"), "resource_type": resource.get("type"),
               "status_text": finding.get("status_detail") or finding.get("message", "")}
        metadata = (resource.get("data") or {}).get("metadata")
        if isinstance(metadata, dict) and metadata.get("in_use") is False:
            # Reported only because of --scan-unused-services (e.g. a default network ACL no
            # subnet uses any more): Prowler's default scan would not evaluate it.
            row["in_use"] = False
        if where == "stack":
            row["matched_by"] = why
            if why.startswith("state:"):
                seen.update(why[len("state:"):].split(","))
            stack_findings.append(row)
        elif where == "account":
            account_findings.append(row)
        else:
            dropped[finding.get("status_code")] += 1
    evidence = " ".join(list(result["prowler_errors"]) + list(result["emulator_gaps"]))
    for row in stack_findings + account_findings:
        why = caveat(row["check"], evidence) if row["status"] == "FAIL" else None
        if why:
            row["emulator_caveat"] = why
    order = {s: i for i, s in enumerate(SEVERITIES)}
    key = lambda r: (order.get(r["severity"], 9), r["check"], r["resource"])  # noqa: E731
    fails = sorted((r for r in stack_findings if r["status"] == "FAIL"), key=key)
    for row in fails:
        row["accepted"] = row["check"] in accepted
        row["gating"] = row["severity"] in GATING and not row["accepted"]

    result.update(
        status="scanned",
        fails=fails,
        manual=sorted((r for r in stack_findings if r["status"] == "MANUAL"), key=key),
        fail_counts={s: sum(1 for r in fails if r["severity"] == s) for s in SEVERITIES},
        stack_counts=dict(Counter(r["status"] for r in stack_findings)),
        account_fails=sorted((r for r in account_findings if r["status"] == "FAIL"), key=key),
        account_counts=dict(Counter(r["status"] for r in account_findings)),
        dropped_counts=dict(dropped),
        gating=[f"{r['check']} {r['resource']}" for r in fails if r["gating"]],
        # Recorded resources Prowler said nothing about: not every kind has a check (records,
        # listeners, markers), but a kind that has one and is missing was not collected.
        not_reported=sorted(f"{k} ({r['kind']})" for k, r in state["resources"].items() if k not in seen),
    )
    return result


# --------------------------------------------------------------------------------------------
# The report.

def print_profile(result):
    profile = result["profile"]
    print(f"\n=== profile {profile}: {result['status']}" + (f" ({result.get('seconds')} s: up {result.get('up_seconds')} s, "
          f"Prowler {result.get('prowler_seconds')} s)" if result["status"] == "scanned" else ""))
    if result["status"] != "scanned":
        print(f"  {result['reason']}")
        return
    print(f"  FAIL on the stack's resources ({len(result['fails'])}):")
    for r in result["fails"]:
        mark = " [accepted]" if r["accepted"] else (" [GATE]" if r["gating"] else "")
        print(f"    {r['severity']:<13} {r['check']}{mark}\n                  {r['resource']}: {r['status_text']}")
        if r.get("in_use") is False:
            print("                  (not in use: reported only because of --scan-unused-services)")
        if r.get("emulator_caveat"):
            print(f"                  (emulator caveat: {r['emulator_caveat']})")
    if result["manual"]:
        print(f"  MANUAL (not evaluated) on the stack's resources ({len(result['manual'])}):")
        for r in result["manual"]:
            print(f"    {r['severity']:<13} {r['check']} {r['resource']}: {r['status_text']}")
    print(f"  account-level FAIL (reported, never gating) ({len(result['account_fails'])}):")
    for r in result["account_fails"]:
        note = f" (emulator caveat: {r['emulator_caveat']})" if r.get("emulator_caveat") else ""
        print(f"    {r['severity']:<13} {r['check']}: {r['status_text']}{note}")
    print(f"  dropped (not the stack's: moto's default resources): {result['dropped_counts']}")
    if result["prowler_errors"]:
        print(f"  Prowler collection errors ({sum(result['prowler_errors'].values())}; what they cover was not evaluated):")
        for what, n in sorted(result["prowler_errors"].items()):
            print(f"    {n:>3} x {what}")
    if result["emulator_gaps"]:
        print(f"  moto's own errors during the scan (the HTTP 500s above): "
              + ", ".join(f"{what} x{n}" for what, n in sorted(result["emulator_gaps"].items())))
    if result["emulator_refusals_during_scan"]:
        print(f"  the emulator's strict model refused during the scan: {result['emulator_refusals_during_scan']}")
    print(f"  recorded resources Prowler reported nothing on: {', '.join(result['not_reported'])}")


def print_counts(results):
    print("\n=== FAIL on the stack's resources, per profile and severity")
    print(f"  {'profile':<10}" + "".join(f"{s:>15}" for s in SEVERITIES) + f"{'total':>8}{'gating':>8}{'PASS':>7}{'account FAIL':>14}")
    for r in results:
        if r["status"] != "scanned":
            print(f"  {r['profile']:<10} {r['status']}")
            continue
        c = r["fail_counts"]
        print(f"  {r['profile']:<10}" + "".join(f"{c[s]:>15}" for s in SEVERITIES) + f"{sum(c.values()):>8}{len(r['gating']):>8}"
              f"{r['stack_counts'].get('PASS', 0):>7}{len(r['account_fails']):>14}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES),
                        help="audit only this profile (repeat); asking for one the binary lacks is an error")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "gitlab-provision"))
    parser.add_argument("--emulator-python", default=os.path.join(ROOT, ".venv", "bin", "python"),
                        help="the Python of the emulator's virtualenv (moto)")
    parser.add_argument("--prowler", default=os.path.join(os.path.dirname(sys.executable), "prowler"))
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "audit"))
    opts = parser.parse_args()
    opts.out = os.path.abspath(opts.out)
    os.makedirs(opts.out, exist_ok=True)

    begun = time.monotonic()
    accepted = accepted_findings(opts.readme)
    version = prowler_version(opts.prowler)
    log(f"Prowler {version}; {len(accepted)} accepted finding(s) in {os.path.relpath(opts.readme, ROOT)}; stack {STACK}")
    results = []
    for profile in opts.profile or list(PROFILES):
        try:
            results.append(audit_profile(profile, opts, accepted))
        except Exception as e:  # a broken harness or scanner: report it with the other profiles
            results.append({"profile": profile, "status": "error", "reason": f"{type(e).__name__}: {e}"})
            log(f"{profile}: ERROR: {type(e).__name__}: {e}")

    for result in results:
        print_profile(result)
    print_counts(results)

    errors = [r for r in results if r["status"] == "error" or (r["status"] == "unavailable" and opts.profile)]
    if not any(r["status"] == "scanned" for r in results) and not errors:
        errors = results  # nothing was audited at all: that is no pass
    gating = [(r["profile"], g) for r in results if r["status"] == "scanned" for g in r["gating"]]
    unavailable = [r["profile"] for r in results if r["status"] == "unavailable"]
    verdict = "error" if errors else ("fail" if gating else "pass")
    summary = {"verdict": verdict, "prowler_version": version, "stack": STACK, "services": SERVICES,
               "accepted_findings": accepted, "seconds": round(time.monotonic() - begun, 1),
               "profiles": {r["profile"]: r for r in results}}
    path = os.path.join(opts.out, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    print(f"\nsummary: {os.path.relpath(path, ROOT)}; {summary['seconds']} s in all")
    if unavailable:
        print(f"NOT AUDITED: {', '.join(unavailable)} (see above){'' if opts.profile else '; not counted against the verdict'}")
    if errors:
        print(f"AUDIT ERROR: {', '.join(r['profile'] for r in errors)} could not be audited")
        return 2
    if gating:
        print(f"AUDIT FAILED: {len(gating)} high/critical FAIL(s) not in README's '### Accepted findings':")
        for profile, what in gating:
            print(f"  {profile}: {what}")
        return 1
    print("audit passed: no high or critical FAIL on the stack outside the accepted findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
