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
  ends in "-efs-init" runs the real lambda-efs-init/handler.py in this process, against a
  directory standing in for the EFS file system (--efs-root), and answers as Lambda would,
  including X-Amz-Function-Error when the handler raises.
- The request body is captured too (as "body"), for parameters moto accepts but drops.
- --model-scale F turns on the latency model (see LatencyModel): resources stay in their
  pending states for AWS-like durations times F, and every call takes API_LATENCY (unscaled:
  a round trip costs the same whatever the time scale).
The product never knows any of this: it only sees AWS_ENDPOINT_URL.
"""

import argparse
import http.client
import json
import logging
import xml.etree.ElementTree as ET
import os
import random
import re
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

from moto.server import ThreadedMotoServer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lambda-efs-init"))
import handler as efs_init  # noqa: E402

INVOKE = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations")
FUNCTION = re.compile(r"^/2015-03-31/functions/([^/?]+)")

# How long things take on AWS, in seconds, for the latency model. Sources: AWS docs and the
# reference CDK app's own 1,003.7 s deployment log; "observed" figures are typical console times.
#  - NAT gateway pending -> available: 60-120 s (observed; AWS: "a few minutes")
#  - ALB provisioning -> active: 120-180 s (observed)
#  - EFS mount target creating -> available: ~80 s (observed; AWS: "a few minutes")
#  - EFS file system creating -> available: a few seconds
#  - Lambda function in a VPC Pending -> Active: ~60 s (AWS: Hyperplane ENI creation, "up to 90 s")
#  - Lambda Hyperplane ENIs released after the function is deleted: up to 20 min (AWS docs);
#    modelled at 600 s
#  - ACM DNS validation PENDING_VALIDATION -> ISSUED: ~120 s once the CNAME resolves (observed)
#  - NAT instance pending -> running: ~40 s
#  - one API call: ~50 ms round trip from a client in the region
DURATIONS = {
    "nat_gateway": 90.0,
    "load_balancer": 150.0,
    "mount_target": 80.0,
    "file_system": 5.0,
    "function": 60.0,
    "eni_release": 600.0,
    "certificate": 120.0,
    "instance": 40.0,
}
API_LATENCY = 0.05


def local(tag):
    return tag.rsplit("}", 1)[-1]


class LatencyModel:
    """Keeps resources pending for DURATIONS x scale after they are created, by rewriting the
    state fields of describe answers: the tool must wait for them as it would on AWS."""

    def __init__(self, scale, moto_url):
        self.scale = scale
        self.born = {}  # id -> (kind, time created)
        self.function_enis = {}  # function name -> the ENI Lambda made for it
        self.released = {}  # ENI id -> time Lambda lets go of it (None while the function exists)
        self.lock = threading.Lock()
        self.moto_url = moto_url

    def lambda_interface(self, request_body):
        """What Lambda does for a function in a VPC: a network interface in its subnet, with its
        security group, owned by Lambda (in use) until some time after the function is deleted."""
        import boto3

        try:
            config = json.loads(request_body)
            vpc = config.get("VpcConfig") or {}
            if not vpc.get("SubnetIds"):
                return
            ec2 = boto3.client("ec2", endpoint_url=self.moto_url, region_name="us-east-1", aws_access_key_id="model", aws_secret_access_key="model")
            eni = ec2.create_network_interface(
                SubnetId=vpc["SubnetIds"][0], Groups=vpc.get("SecurityGroupIds", []), Description=f"AWS Lambda VPC ENI-{config['FunctionName']}"
            )["NetworkInterface"]["NetworkInterfaceId"]
            with self.lock:
                self.function_enis[config["FunctionName"]] = eni
                self.released[eni] = None
        except Exception as e:  # the model must never break the emulator
            print(f"latency model: no Lambda interface: {e}", file=sys.stderr)

    def function_deleted(self, name):
        with self.lock:
            eni = self.function_enis.pop(name, None)
            if eni:
                self.released[eni] = time.monotonic() + DURATIONS["eni_release"] * self.scale

    def interface_in_use(self, ident):
        with self.lock:
            if ident not in self.released:
                return False
            at = self.released[ident]
        return at is None or time.monotonic() < at

    def young(self, kind, ident):
        with self.lock:
            entry = self.born.get(ident)
        return entry is not None and entry[0] == kind and time.monotonic() - entry[1] < DURATIONS[kind] * self.scale

    def note(self, kind, ident):
        with self.lock:
            self.born.setdefault(ident, (kind, time.monotonic()))

    def after_create(self, action, path, method, data):
        """Remembers when resources are created, from the create calls' answers."""
        text = data.decode("utf-8", "replace")
        xml_ids = {"CreateNatGateway": ("nat_gateway", "natGatewayId"), "RunInstances": ("instance", "instanceId"), "CreateLoadBalancer": ("load_balancer", "LoadBalancerArn")}
        if action in xml_ids:
            kind, tag = xml_ids[action]
            for m in re.finditer(rf"<{tag}>([^<]+)</{tag}>", text):
                self.note(kind, m.group(1))
        elif action == "CreateFileSystem" or (method == "POST" and path.startswith("/2015-02-01/file-systems")):
            try:
                self.note("file_system", json.loads(text)["FileSystemId"])
            except (ValueError, KeyError):
                pass
        elif method == "POST" and path.startswith("/2015-02-01/mount-targets"):
            try:
                self.note("mount_target", json.loads(text)["MountTargetId"])
            except (ValueError, KeyError):
                pass
        elif method == "POST" and path.rstrip("/") == "/2015-03-31/functions":
            try:
                self.note("function", json.loads(text)["FunctionName"])
            except (ValueError, KeyError):
                pass

    def rewrite(self, action, path, method, data):
        """Describe answers for young resources say what AWS would still say."""
        try:
            if action == "DescribeNetworkInterfaces":
                return self.rewrite_xml(data, "networkInterfaceId", None, [("status",)], "in-use")
            if action == "DescribeNatGateways":
                return self.rewrite_xml(data, "natGatewayId", "nat_gateway", [("state",)], "pending")
            if action == "DescribeInstances":
                return self.rewrite_xml(data, "instanceId", "instance", [("instanceState", "name")], "pending")
            if action == "DescribeLoadBalancers":
                return self.rewrite_xml(data, "LoadBalancerArn", "load_balancer", [("State", "Code")], "provisioning")
            if method == "GET" and path.startswith("/2015-02-01/file-systems"):
                return self.rewrite_json(data, "FileSystems", "FileSystemId", "file_system", "LifeCycleState", "creating")
            if method == "GET" and path.startswith("/2015-02-01/mount-targets"):
                return self.rewrite_json(data, "MountTargets", "MountTargetId", "mount_target", "LifeCycleState", "creating")
            m = FUNCTION.match(path)
            if method == "GET" and m and self.young("function", m.group(1)):
                doc = json.loads(data)
                target = doc.get("Configuration", doc)
                target["State"] = "Pending"
                return json.dumps(doc).encode()
        except (ET.ParseError, ValueError):
            pass
        return data

    def rewrite_xml(self, data, id_tag, kind, paths, pending):
        root = ET.fromstring(data)
        changed = False
        for el in root.iter():
            ident = next((c.text for c in el if local(c.tag) == id_tag), None)
            if not ident or not (self.interface_in_use(ident) if kind is None else self.young(kind, ident)):
                continue
            for path in paths:
                node = el
                for name in path:
                    node = next((c for c in node if local(c.tag) == name), None)
                    if node is None:
                        break
                if node is not None:
                    node.text = pending
                    changed = True
        if not changed:
            return data
        namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else None
        if namespace:
            ET.register_namespace("", namespace)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def rewrite_json(self, data, list_field, id_field, kind, state_field, pending):
        doc = json.loads(data)
        items = doc.get(list_field)
        if items is None:
            items = [doc]
        changed = False
        for item in items:
            if self.young(kind, item.get(id_field, "")):
                item[state_field] = pending
                changed = True
        return json.dumps(doc).encode() if changed else data


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


def run_initializer(body, efs_root):
    """Runs the real initializer as Lambda would: (status, headers, payload)."""
    try:
        event = json.loads(body or b"{}")
        result = efs_init.prepare(efs_root, event.get("base", efs_init.DEFAULT_BASE), event.get("directories", efs_init.DEFAULT_DIRECTORIES))
        return {}, json.dumps(result).encode()
    except Exception as e:  # Lambda reports any exception as a function error
        return {"X-Amz-Function-Error": "Unhandled"}, json.dumps({"errorMessage": str(e), "errorType": type(e).__name__}).encode()


def make_handler(moto_port, capture_path, faults, capture_lock, efs_root, model):
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle_any(self):
            received = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            service, action, mutating = classify(self.headers, body, self.command, self.path)
            rule = faults.match(service, action)
            fault = bool(rule and (rule.get("status") or rule.get("drop")))
            with capture_lock, open(capture_path, "a") as f:
                text = body[:20000].decode("utf-8", "replace")
                f.write(json.dumps({"service": service, "action": action, "method": self.command, "path": self.path, "mutating": mutating, "body": text, "fault": fault}) + "\n")
            if model:
                # A round trip costs the same at any time scale.
                time.sleep(API_LATENCY)
            if rule and rule.get("delay"):
                time.sleep(rule["delay"])
            if rule and rule.get("drop"):
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if rule and rule.get("status") and rule.get("when", "before") == "before":
                return self.fail(rule)
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
            if rule and rule.get("status"):
                return self.fail(rule)
            if model and resp.status < 300:
                model.after_create(action, self.path, self.command, data)
                if self.command == "POST" and self.path.rstrip("/") == "/2015-03-31/functions":
                    model.lambda_interface(body)
                deleted = FUNCTION.match(self.path)
                if self.command == "DELETE" and deleted:
                    model.function_deleted(deleted.group(1))
                data = model.rewrite(action, self.path, self.command, data)
            invoke = INVOKE.match(self.path)
            if invoke and resp.status == 200 and invoke.group(1).endswith("-efs-init"):
                extra, data = run_initializer(body, efs_root)
                self.send_response(200)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()
                return
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()
            with capture_lock, open(capture_path + ".durations", "a") as f:
                f.write(f"{service} {time.monotonic() - received:.6f}\n")

        def fail(self, rule):
            code = rule.get("code", "InternalError")
            message = rule.get("message", "injected by the test harness")
            service, _, _ = classify(self.headers, b"", self.command, self.path)
            if service == "ec2":
                content_type = "text/xml"
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error></Errors><RequestID>harness</RequestID></Response>"
                ).encode()
            elif "xml" in self.headers.get("Content-Type", "") or "x-www-form-urlencoded" in self.headers.get("Content-Type", "") or service == "route53":
                # The query protocol (IAM, ELB) and REST-XML (Route 53).
                content_type = "text/xml"
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?><ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error><RequestId>harness</RequestId></ErrorResponse>"
                ).encode()
            else:
                content_type = "application/x-amz-json-1.1"
                body = json.dumps({"__type": code, "message": message}).encode()
            self.send_response(int(rule["status"]))
            self.send_header("Content-Type", content_type)
            self.send_header("x-amzn-ErrorType", code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any

    return Proxy


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client killed mid-request (the crash tests do that) is not the harness's problem.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError)):
            return
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--capture", required=True)
    parser.add_argument("--faults")
    parser.add_argument("--efs-root", help="directory standing in for the EFS file system")
    parser.add_argument("--model-scale", type=float, help="turn on the latency model, times this factor (e.g. 0.02)")
    args = parser.parse_args()
    efs_root = args.efs_root or os.path.join(os.path.dirname(os.path.abspath(args.capture)), "efs")
    os.makedirs(efs_root, exist_ok=True)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    model = None
    if args.model_scale:
        # moto's own knob for certificates: ISSUED this many seconds after the request.
        from moto import settings as moto_settings

        moto_settings.ACM_VALIDATION_WAIT = max(1, round(DURATIONS["certificate"] * args.model_scale))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    _, moto_port = moto.get_host_and_port()
    if args.model_scale:
        model = LatencyModel(args.model_scale, f"http://127.0.0.1:{moto_port}")
    # No Docker engine here: moto must not try to run functions in containers.
    conn = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=30)
    conn.request("POST", "/moto-api/config", body=json.dumps({"lambda": {"use_docker": False}}), headers={"Content-Type": "application/json"})
    conn.getresponse().read()
    conn.close()
    open(args.capture, "w").close()
    proxy = QuietServer(("127.0.0.1", 0), make_handler(moto_port, args.capture, Faults(args.faults), threading.Lock(), efs_root, model))
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    print(json.dumps({"endpoint": f"http://127.0.0.1:{proxy.server_address[1]}", "moto": f"http://127.0.0.1:{moto_port}"}), flush=True)
    sys.stdin.read()  # until the test closes our stdin or exits


if __name__ == "__main__":
    main()
