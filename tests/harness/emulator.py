"""Test harness: moto (the AWS emulator) behind a recording, fault-injecting proxy.

Started by the Rust tests, one per test. Prints one JSON line with the endpoints, then serves
until its stdin closes (so it dies with the test that started it).

    python emulator.py --capture FILE [--faults FILE]

- Every request through the proxy is appended to --capture as a JSON line:
  {"service", "action", "method", "path", "mutating"}.
- --faults names a JSON file, re-read whenever it changes, holding a list of rules:
  {"action": "CreateVpc" | "*", "service": "ec2", "status": 403, "code": "UnauthorizedOperation",
   "times": 1, "probability": 0.2, "when": "before" | "after", "delay": 0.0, "drop": false}
  "before" answers with the error instead of forwarding; "after" forwards (so the resource is
  created) and then answers with the error: a lost response. "delay" sleeps before answering;
  "drop" closes the connection without an answer. "probability" applies the rule to that share
  of matching calls (seeded, so a run is repeatable); "times" caps how often it applies.
- Lambda: moto cannot run functions here (no Docker), so an Invoke of a function whose name
  ends in "-efs-init" runs the real lambda-efs-init/handler.py in this process, against the
  directory standing in for the file system the function mounts (--efs-root/<fs-id>), and
  answers as Lambda would, including X-Amz-Function-Error when the handler raises.
- The request body is captured too (as "body"), for parameters moto accepts but drops.
- The strict model (strict.py) is on unless --lenient: AWS's pending states, read-after-create
  windows, lingering interfaces, dependency checks, ECS tasks on Fargate, AWS Backup jobs. Its
  durations are AWS's times --time-scale (default 0.002). A refusal it makes is captured with
  "refused" (the error code) and "rule"; what it does on its own schedule (an interface Lambda
  cannot release, a log group a service creates) as {"service": "model", "rule": ...}.
  --control names a JSON file of knobs a test may set (e.g. {"gitlab_first_boot": 100} in AWS
  seconds, {"pull_error": "..."}; strict.py lists them). A call the model makes to moto on the
  caller's behalf that moto refuses is answered with moto's error, never a dropped connection.
- Service Quotas calls are service "servicequotas" (their signing name), read-only (Get/List).
- --model-scale F (the benchmark): --time-scale F, and every call takes API_LATENCY.
- `start()` runs all of it inside a Python process (the model's own tests use it).
The product never knows any of this: it only sees AWS_ENDPOINT_URL.
"""

import argparse
import datetime
import http.client
import json
import logging
import os
import random
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

# What moto needs before it is imported: AWS-managed IAM policies, certificates that become
# ISSUED after a second of "validation", ECS services that report a running task.
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
os.environ.setdefault("MOTO_ACM_VALIDATION_WAIT", "1")
os.environ.setdefault("MOTO_ECS_SERVICE_RUNNING", "1")

import cbor2  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lambda-efs-init"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import handler as efs_init  # noqa: E402
from strict import RULES, Refusal, Request, Strict  # noqa: E402

INVOKE = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations")
FUNCTION = re.compile(r"^/2015-03-31/functions/([^/?]+)")

# One API call: ~50 ms round trip from a client in the region (only with --model-scale, for the
# benchmark: a round trip costs the same whatever the time scale).
API_LATENCY = 0.05


# The Smithy RPC v2 CBOR protocol's path: /service/{ServiceName}/operation/{Operation}.
RPC_V2 = re.compile(r"^/service/([A-Za-z0-9_]+)/operation/([A-Za-z0-9_]+)")


# CloudWatch's shapes declared as Double: JSON writes 1.0 as 1, but the SDK's CBOR decoder
# refuses an integer where the model says double ("expected f64"), so these are always floats.
CBOR_DOUBLES = {"Threshold", "Values", "Value", "Sum", "Average", "Minimum", "Maximum", "SampleCount"}


def is_timestamp_field(key):
    return key.endswith(("Timestamp", "Timestamps"))


def cbor_document(value, key=""):
    """A JSON answer's document in the types Smithy's CBOR protocol expects: timestamps (epoch
    seconds in JSON, or ISO strings from moto) as tag 1 over a double, never an integer, since
    the SDK decodes tag 1 as f64 and a whole-second timestamp would otherwise fail it; doubles
    as doubles."""
    if isinstance(value, dict):
        return {k: cbor_document(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [cbor_document(v, key) for v in value]
    if isinstance(value, bool):
        return value
    if is_timestamp_field(key) and isinstance(value, (int, float)):
        return cbor2.CBORTag(1, float(value))
    if is_timestamp_field(key) and isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return cbor2.CBORTag(1, float(moment.timestamp()))
    if key in CBOR_DOUBLES and isinstance(value, int):
        return float(value)
    return value
    return value


READ_PREFIXES = ("Describe", "Get", "List", "Head", "Check")


def classify(headers, body, method, path):
    auth = headers.get("Authorization", "")
    m = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", auth)
    service = m.group(1) if m else "unknown"
    target = headers.get("X-Amz-Target")
    if target:
        action = target.split(".")[-1]
    else:
        action = None
        if body and "x-www-form-urlencoded" in headers.get("Content-Type", ""):
            action = parse_qs(body.decode("utf-8", "replace")).get("Action", [None])[0]
        if action is None:
            action = f"{method} {path.split('?')[0]}"
    if action.startswith(("GET ", "HEAD ")):
        mutating = False
    elif " " in action:
        mutating = True
    else:
        mutating = not action.startswith(READ_PREFIXES)
    return service, action, mutating


class Faults:
    def __init__(self, path):
        self.path = path
        self.mtime = None
        self.rules = []
        self.used = []
        self.lock = threading.Lock()
        self.random = random.Random(1234)

    def match(self, service, action):
        """The rule that applies to this call, counting it; None when none applies."""
        if not self.path:
            return None
        with self.lock:
            try:
                mtime = os.stat(self.path).st_mtime_ns
            except FileNotFoundError:
                self.rules, self.used, self.mtime = [], [], None
                return None
            if mtime != self.mtime:
                with open(self.path) as f:
                    self.rules = json.load(f)
                self.used = [0] * len(self.rules)
                self.mtime = mtime
            for i, rule in enumerate(self.rules):
                if rule.get("action", "*") not in (action, "*") or rule.get("service", service) != service:
                    continue
                times = rule.get("times")
                if times is not None and self.used[i] >= times:
                    continue
                if "probability" in rule and self.random.random() >= rule["probability"]:
                    continue
                self.used[i] += 1
                return rule
        return None


def run_initializer(body, mount):
    """Runs the real initializer as Lambda would, on `mount` (the directory standing in for the
    file system the function mounts): (headers, payload)."""
    try:
        event = json.loads(body or b"{}")
        result = efs_init.prepare(mount, event.get("base", efs_init.DEFAULT_BASE), event.get("directories", efs_init.DEFAULT_DIRECTORIES))
        return {}, json.dumps(result).encode()
    except Exception as e:  # Lambda reports any exception as a function error
        return {"X-Amz-Function-Error": "Unhandled"}, json.dumps({"errorMessage": str(e), "errorType": type(e).__name__}).encode()


def error_body(service, headers, code, message):
    """An AWS error in the protocol of the service: (content type, body)."""
    message = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if service == "ec2":
        return "text/xml", (
            f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>harness</RequestID></Response>"
        ).encode()
    if service == "s3":
        # REST-XML without the query protocol's ErrorResponse wrapper (S3 API, "Error responses").
        return "application/xml", (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>harness</RequestId></Error>"
        ).encode()
    if "x-www-form-urlencoded" in headers.get("Content-Type", "") or service == "route53":
        # The query protocol (IAM, ELB, STS) and REST-XML (Route 53).
        return "text/xml", (
            f'<?xml version="1.0" encoding="UTF-8"?><ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>harness</RequestId></ErrorResponse>"
        ).encode()
    return "application/x-amz-json-1.1", json.dumps({"__type": code, "message": message, "Message": message}).encode()


def model_error(e):
    """(status, code, message) for an exception the strict model raised while answering: an AWS
    error moto gave the model's own call (MountTargetNotFound...) is the caller's answer too;
    anything else is the model's fault, answered as a 500 (the SDK retries; stderr says why)."""
    response = getattr(e, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code"):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 400
        return status, response["Error"]["Code"], response["Error"].get("Message") or str(e)
    import traceback

    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return 500, "InternalFailure", f"strict model: {type(e).__name__}: {e}"


def make_handler(moto_port, capture_path, faults, capture_lock, efs_root, strict, api_latency):
    def record(entry):
        with capture_lock, open(capture_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def record_model_events():
        while strict and strict.fired:
            rule, detail = strict.fired.pop(0)
            record({"service": "model", "action": rule, "detail": str(detail), "mutating": False, "rule": rule, "at": time.time()})

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # An answer is written as headers, then body: without this, Nagle's algorithm holds
            # the body until the client's delayed ACK of the headers (~40 ms a call, on keep-alive).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):
            pass

        def handle_any(self):
            received = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            self.cbor = False
            rpc = RPC_V2.match(self.path)
            if rpc and self.headers.get("smithy-protocol") == "rpc-v2-cbor":
                body = self.from_cbor(rpc.group(1), rpc.group(2), body)
            service, action, mutating = classify(self.headers, body, self.command, self.path)
            rule = faults.match(service, action)
            fault = bool(rule and (rule.get("status") or rule.get("drop")))
            entry = {"service": service, "action": action, "method": self.command, "path": self.path, "mutating": mutating,
                     "body": body[:20000].decode("utf-8", "replace"), "fault": fault, "at": time.time()}
            if api_latency:
                time.sleep(api_latency)
            if rule and rule.get("delay"):
                time.sleep(rule["delay"])
            if rule and rule.get("drop"):
                record(entry)
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if rule and rule.get("status") and rule.get("when", "before") == "before":
                record(entry)
                return self.send_error_answer(int(rule["status"]), rule.get("code", "InternalError"), rule.get("message", "injected by the test harness"))
            request = Request(service, action, self.command, self.path, self.headers, body) if strict else None
            if strict:
                try:
                    answer = strict.before(request)
                except Refusal as refusal:
                    entry.update(refused=refusal.code, rule=refusal.rule)
                    record(entry)
                    record_model_events()
                    return self.send_error_answer(refusal.status, refusal.code, refusal.message)
                except Exception as e:  # the model's own call to moto failed: answer, never drop
                    status, code, message = model_error(e)
                    entry.update(refused=code)
                    if status >= 500:
                        entry.update(rule="model-error")  # the model's bug, for whoever reads the capture
                    record(entry)
                    return self.send_error_answer(status, code, message)
                if answer is not None:
                    entry.update(rule=answer.rule)
                    record(entry)
                    record_model_events()
                    return self.send_answer(answer.status, answer.content_type, answer.body)
            record(entry)
            path = self.path
            if service == "backup" and self.command == "GET" and path.startswith("/tags/") and not path.endswith("/"):
                # AWS's ListTags path is /tags/{arn}/; the Rust SDK omits the final slash, which
                # AWS accepts and moto 5.2.5 does not (it reads the ARN from the second-to-last part).
                path += "/"
            conn = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if rule and rule.get("status"):
                return self.send_error_answer(int(rule["status"]), rule.get("code", "InternalError"), rule.get("message", "injected by the test harness"))
            data = s3_root_as_aws(service, self.command, path, data)
            if strict:
                try:
                    data = strict.after(request, resp.status, data)
                except Exception as e:  # moto's answer stands
                    print(f"strict model: after {action}: {type(e).__name__}: {e}", file=sys.stderr)
                record_model_events()
            invoke = INVOKE.match(self.path)
            if invoke and resp.status == 200 and invoke.group(1).endswith("-efs-init"):
                name = invoke.group(1)
                file_system = strict.function_file_system(request, name) if strict else None
                mount = strict.efs_dir(file_system) if file_system else efs_root
                extra, data = run_initializer(body, mount)
                if strict:
                    strict.lambda_invoked(request, name)
                    record_model_events()
                return self.send_answer(200, "application/json", data, extra)
            if self.cbor:
                return self.send_answer(resp.status, "application/cbor", data)
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            with capture_lock, open(capture_path + ".durations", "a") as f:
                f.write(f"{service} {time.monotonic() - received:.6f}\n")

        def from_cbor(self, target, operation, body):
            """moto 5.2.5 speaks CloudWatch's JSON and query protocols, not the Smithy RPC v2 CBOR
            one the Rust SDK uses (CloudWatch lists rpcv2Cbor first): the request is passed on as
            AWS JSON 1.0 and the answer turned back into CBOR (send_answer, the forward below)."""
            self.cbor = True
            document = cbor2.loads(body) if body else {}
            for header, value in (("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", f"{target}.{operation}")):
                del self.headers[header]
                self.headers[header] = value
            del self.headers["smithy-protocol"]
            self.path = "/"
            data = json.dumps(document, default=lambda v: v.timestamp() if hasattr(v, "timestamp") else str(v)).encode()
            del self.headers["Content-Length"]
            self.headers["Content-Length"] = str(len(data))
            return data

        def to_cbor(self, data):
            """A JSON answer as CBOR, typed as the SDK decodes it (cbor_document)."""
            try:
                document = json.loads(data) if data else {}
            except ValueError:
                return data
            return cbor2.dumps(cbor_document(document))

        def send_answer(self, status, content_type, data, extra=None):
            if self.cbor:
                content_type, data = "application/cbor", self.to_cbor(data)
                extra = {**(extra or {}), "smithy-protocol": "rpc-v2-cbor"}
            self.send_response(status)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_error_answer(self, status, code, message):
            service, _, _ = classify(self.headers, b"", self.command, self.path)
            if service == "s3" and "throttl" in code.lower():
                # S3 throttles as 503 SlowDown, never a 400 (S3 API, "Error responses"); a HEAD's
                # answer has no body, so the status is all the client sees.
                status, code = 503, "SlowDown"
            content_type, data = error_body(service, self.headers, code, message)
            self.send_answer(status, content_type, data, {"x-amzn-ErrorType": code})

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any

    return Proxy


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client killed mid-request (the crash tests do that) is not the harness's problem.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError)):
            return
        super().handle_error(request, client_address)


class Harness:
    """moto and the proxy, running in this process (see start)."""

    def __init__(self, endpoint, moto_url, efs_root, strict, proxy, moto):
        self.endpoint, self.moto_url, self.efs_root, self.strict = endpoint, moto_url, efs_root, strict
        self._proxy, self._moto = proxy, moto

    def close(self):
        self._proxy.shutdown()
        self._proxy.server_close()
        self._moto.stop()


# moto's name for each service whose backend is imported before the first request.
PRELOADED = ("acm", "backup", "ec2", "ecs", "efs", "elbv2", "iam", "awslambda", "logs", "route53", "secretsmanager",
             "service-quotas", "sts", "ssm")


def s3_root_as_aws(service, method, path, data):
    """moto 5.2.5 answers GetBucketVersioning under <GetBucketVersioningResponse>; S3's root is
    <VersioningConfiguration> (S3 API reference, GetBucketVersioning), and the Rust SDK refuses
    any other root ("expected VersioningConfiguration")."""
    if service == "s3" and method == "GET" and re.search(r"[?&]versioning(=|&|$)", path):
        return data.replace(b"GetBucketVersioningResponse", b"VersioningConfiguration")
    return data


def requests_arrive_over_tls():
    """AWS's endpoints are HTTPS, the harness's plain HTTP. moto 5.2.5 evaluates a bucket policy's
    conditions against an empty request context and treats a statement whose condition does not
    hold as a denial, so a policy that denies requests "unless aws:SecureTransport" (the one S3's
    guide and Prowler's s3_bucket_secure_transport_policy ask for) refuses every object call.
    Through AWS's endpoints the SDK's requests have aws:SecureTransport = true, and such a
    statement never applies (IAM User Guide, "AWS global condition context keys"): left out here."""
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    def denies_only_without_tls(statement):
        return statement.get("Effect") == "Deny" and statement.get("Condition") in (
            {"Bool": {"aws:SecureTransport": "false"}}, {"Bool": {"aws:SecureTransport": False}})

    def get_permission(bucket, action, resource):
        if bucket.policy is None:
            return PermissionResult.NEUTRAL
        policy = json.loads(bucket.policy.decode() if isinstance(bucket.policy, bytes) else bucket.policy)
        statements = policy.get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        kept = [s for s in statements if not denies_only_without_tls(s)]
        if not kept:
            return PermissionResult.NEUTRAL
        return IAMPolicy(json.dumps({**policy, "Statement": kept})).is_action_permitted(action, resource)

    FakeBucket.get_permission = get_permission


def start(capture, faults=None, control=None, efs_root=None, scale=0.002, lenient=False, api_latency=0.0):
    """Starts moto and the proxy (with the strict model unless `lenient`) on free ports of this
    process; returns a Harness. The command line below and the model's own tests use it."""
    efs_root = efs_root or os.path.join(os.path.dirname(os.path.abspath(capture)), "efs")
    os.makedirs(efs_root, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if not lenient:
        # moto's own knob for certificates: ISSUED this many seconds after the request.
        from moto import settings as moto_settings

        moto_settings.ACM_VALIDATION_WAIT = max(1, round(RULES["certificate-validation"].seconds * scale))
    # moto imports each service's backend on its first request; a tool that opens with a dozen
    # concurrent reads would wait seconds for imports contending for the GIL. Import them first.
    from moto.backends import get_backend

    for service in PRELOADED:
        try:
            get_backend(service)["123456789012"]["us-east-1" if service != "route53" else "global"]
        except Exception:
            pass  # a moto without this service
    requests_arrive_over_tls()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    _, moto_port = moto.get_host_and_port()
    strict = None if lenient else Strict(scale, f"http://127.0.0.1:{moto_port}", efs_root, control)
    # No Docker engine here: moto must not try to run functions in containers.
    conn = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=30)
    conn.request("POST", "/moto-api/config", body=json.dumps({"lambda": {"use_docker": False}}), headers={"Content-Type": "application/json"})
    conn.getresponse().read()
    conn.close()
    open(capture, "w").close()
    handler = make_handler(moto_port, capture, Faults(faults), threading.Lock(), efs_root, strict, api_latency)
    proxy = QuietServer(("127.0.0.1", 0), handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return Harness(f"http://127.0.0.1:{proxy.server_address[1]}", f"http://127.0.0.1:{moto_port}", efs_root, strict, proxy, moto)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--capture", required=True)
    parser.add_argument("--faults")
    parser.add_argument("--control", help="JSON knobs for the strict model (see strict.py), re-read on every use")
    parser.add_argument("--efs-root", help="directory standing in for the EFS file systems (one subdirectory each)")
    parser.add_argument("--time-scale", type=float, default=0.002, help="the strict model's AWS durations times this (default 0.002)")
    parser.add_argument("--model-scale", type=float, help="for the benchmark: --time-scale, plus a round trip per call")
    parser.add_argument("--api-latency", type=float, default=API_LATENCY, help="the round trip --model-scale adds, in seconds (default 0.05)")
    parser.add_argument("--lenient", action="store_true", help="bare moto behind the proxy: no strict model")
    args = parser.parse_args()
    harness = start(args.capture, args.faults, args.control, args.efs_root, args.model_scale or args.time_scale, args.lenient,
                    args.api_latency if args.model_scale else 0.0)
    print(json.dumps({"endpoint": harness.endpoint, "moto": harness.moto_url, "efs_root": harness.efs_root}), flush=True)
    sys.stdin.read()  # until the test closes our stdin or exits


if __name__ == "__main__":
    main()
