"""The strict mode of the test harness: moto made to behave as AWS documents.

moto is permissive and instant. On AWS, things take time after a create, linger after a delete,
and refuse to go while something still uses them. This module sits in the harness's proxy and
makes the emulator do the same, so a test that passes here has met what AWS would do. It is on
for every end-to-end test. The product never knows: it only sees AWS_ENDPOINT_URL.

Every rule is listed in RULES with its source and (where it has one) its AWS-side duration.
Durations are multiplied by the time scale (tests: 0.002, so AWS's 20 minutes take 2.4 s here);
"once" windows are not timed: the first call that AWS could refuse is refused, so the product's
retry is exercised on every run, whatever the scale.

How it works:
- `before(req)` may refuse a call (an AWS error), answer it itself (APIs moto lacks: AWS Backup
  jobs, ECS tasks and ECS Exec; deletes AWS performs over time), or let it through.
- `after(req, status, body)` notes what was created or deleted and rewrites describe answers
  with what AWS would still say (pending, deleting, shutting-down, in-use, target health...).
- `tick()` runs scheduled events (an interface released, a task stopped, a job completed), from
  a background thread and before every call.
- Changes the model makes itself (an interface created for a load balancer, a target registered
  by ECS) go straight to moto with boto3, with the caller's credentials (so other accounts work).
"""

import copy
import datetime
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, unquote, urlparse

import boto3
from botocore.config import Config

# ---------------------------------------------------------------------------------------------
# The rules: name -> (AWS-side seconds or None for "once", source).

RULES = {
    # Pending after create (the latency model of round one).
    "nat-gateway-pending": (90, "NAT gateway pending -> available: 60-120 s observed; AWS docs 'a few minutes'"),
    "load-balancer-provisioning": (150, "ALB provisioning -> active: 120-180 s observed"),
    "mount-target-creating": (80, "EFS mount target creating -> available: ~80 s observed"),
    "file-system-creating": (5, "EFS file system creating -> available: seconds"),
    "function-pending": (60, "Lambda in a VPC Pending -> Active: Hyperplane ENI creation, up to 90 s (Lambda docs)"),
    "instance-pending": (40, "EC2 instance pending -> running: ~40 s observed"),
    "certificate-validation": (120, "ACM DNS validation PENDING_VALIDATION -> ISSUED once the CNAME resolves: ~2 min observed"),
    # Read-after-create and propagation windows ("once": the first call AWS may refuse is refused).
    "ec2-read-after-create": (None, "AWS 'Eventual consistency in the Amazon EC2 API': InvalidGroup.NotFound etc. right after a create; Terraform RetryWhenNewResourceNotFound"),
    "lambda-role-not-assumable": (None, "Lambda CreateFunction right after CreateRole: 'The role defined for the function cannot be assumed by Lambda' (IAM propagation; audit #8)"),
    "lambda-role-no-vpc-permission": (None, "Lambda CreateFunction right after AttachRolePolicy: 'does not have permissions to call CreateNetworkInterface on EC2' (Cumulus docs; audit #8)"),
    "listener-certificate-not-found": (None, "ELB CreateListener right after ACM issued the certificate: CertificateNotFound (Terraform listener.go retries it; audit #11)"),
    "secret-name-reserved": (30, "Secrets Manager DeleteSecret: 'actual deletion with an asynchronous background process ... use back off and retry' (API reference; audit #12)"),
    "ecs-service-linked-role": (None, "First CreateService in an account: 'Unable to assume the service linked role' (Terraform cluster.go retryClusterCreate; audit #14)"),
    # Lingering after delete.
    "load-balancer-interfaces-linger": (240, "ELB interfaces (description 'ELB app/...', public IPs) stay minutes after DeleteLoadBalancer; Terraform waits up to 35 min (elbv2 waitForALBNetworkInterfacesToDetach; audit #1)"),
    "nat-gateway-deleting": (60, "NAT gateway 'deleting' ~1 min, its Elastic IP associated meanwhile (AWS NAT gateway docs; hashicorp/terraform#1303; audit #18)"),
    "instance-shutting-down": (45, "EC2 instance shutting-down before terminated, its public address mapped (EC2 instance lifecycle docs)"),
    "mount-target-deleting": (60, "EFS mount target 'deleting' for a while, its interface in place (EFS API reference; audit #17)"),
    "lambda-interfaces-linger": (1200, "Lambda Hyperplane ENIs released up to 20 min after the function is deleted (Terraform commit a54c065; audit #19)"),
    "lambda-interfaces-need-the-role": (None, "Lambda deletes its interfaces with the function's execution role: without it (or its VPC permissions) they stay (aws/serverless-application-model#1169; audit #7)"),
    "certificate-in-use-after-listener": (180, "ACM keeps InUseBy minutes after the listener and load balancer are gone: ResourceInUseException (Terraform acm certificate.go retries 20 min; audit #5)"),
    # Dependencies AWS enforces on delete and moto does not.
    "security-group-in-use": (None, "DeleteSecurityGroup with an interface using it or a group referencing it: DependencyViolation 'resource sg-... has a dependent object' (EC2 API reference)"),
    "subnet-in-use": (None, "DeleteSubnet with interfaces in it: DependencyViolation 'The subnet ... has dependencies and cannot be deleted.' (EC2 API reference)"),
    "vpc-not-empty": (None, "DeleteVpc with subnets, gateways, groups, route tables or interfaces: DependencyViolation (EC2 API reference)"),
    "gateway-mapped-addresses": (None, "DetachInternetGateway while public addresses are mapped in the VPC: 'Network vpc-... has some mapped public address(es)' (hashicorp/terraform#497, #1303, #1628)"),
    "gateway-attached": (None, "DeleteInternetGateway while attached: DependencyViolation (EC2 API reference)"),
    "address-in-use": (None, "ReleaseAddress while associated: InvalidIPAddress.InUse (EC2 API reference)"),
    "route-table-associated": (None, "DeleteRouteTable with subnet associations: DependencyViolation (EC2 API reference)"),
    "instance-type-not-offered": (None, "RunInstances of a type the zone does not offer: Unsupported 'Your requested instance type (t4g.nano) is not supported in your requested Availability Zone' (moto's offerings data already lacks t4g in use1-az3; audit #10)"),
    "security-group-name": (None, "CreateSecurityGroup: 'Group names may not be in the format sg-*' (EC2 API reference; audit #24)"),
    "cluster-contains-tasks": (None, "DeleteCluster while a task is not STOPPED: ClusterContainsTasksException (ECS API reference; Terraform cluster.go; audit #2)"),
    "backup-vault-not-empty": (None, "DeleteBackupVault with recovery points: InvalidRequestException (AWS Backup API reference)"),
    # ECS on Fargate: a task's life, and what ECS does with it.
    "task-provisioning": (20, "Fargate task PROVISIONING (its interface attached): 15-30 s observed"),
    "image-pull": (90, "Fargate pulls the 1.5 GB gitlab-ce image on every task start (no image cache): 60-120 s observed"),
    "gitlab-first-boot": (660, "GitLab's first boot on EFS at 2 vCPU (reconfigure, initdb, schema load over NFS): 5-6 min off EFS per the guide; no published figure on EFS; modelled past ECS's usual 600 s grace (audit #4)"),
    "gitlab-boot": (240, "GitLab's later boots (data in place): reconfigure and services start, ~4 min observed"),
    "health-check": (30, "Target group health check every 30 s; healthy after 2, unhealthy after 10 (the stack's target group)"),
    "deregistration-delay": (30, "Target draining for the target group's deregistration delay (30 s in the stack)"),
    "gitlab-stop": (60, "GitLab's services stop within the task's stopTimeout (120 s): ~1 min observed"),
    "task-deprovisioning": (20, "Fargate task DEPROVISIONING (interface detached) before STOPPED: ~20 s observed"),
    "failed-health-checks": (None, "A task whose target stays unhealthy past the grace period is stopped: 'Task failed ELB health checks'; 3 failures trip the deployment circuit breaker (ECS docs, ServiceDeploymentCircuitBreaker)"),
    "efs-mount-needs-dns-and-directory": (None, "A task's EFS volume fails to mount without VPC DNS or with a missing root directory: ResourceInitializationError (ECS EFS troubleshooting; audit #13)"),
    "container-insights-log-group": (None, "Container Insights creates /aws/ecs/containerinsights/<cluster>/performance when tasks run (audit #28)"),
    "lambda-log-group": (None, "Lambda creates /aws/lambda/<function> on first invoke through its role's logs:CreateLogGroup (audit #28)"),
    # AWS Backup (moto has vaults only).
    "backup-job": (120, "AWS Backup job CREATED -> RUNNING -> COMPLETED: minutes for a small file system"),
    "restore-job": (300, "AWS Backup restore job PENDING -> RUNNING -> COMPLETED into a new file system, data under aws-backup-restore_<date>/ (AWS Backup 'Restore an Amazon EFS file system')"),
}

EC2_NOT_FOUND = {
    "vpc": ("InvalidVpcID.NotFound", "The vpc ID '{}' does not exist"),
    "subnet": ("InvalidSubnetID.NotFound", "The subnet ID '{}' does not exist"),
    "sg": ("InvalidGroup.NotFound", "The security group '{}' does not exist"),
    "rtb": ("InvalidRouteTableID.NotFound", "The routeTable ID '{}' does not exist"),
    "igw": ("InvalidInternetGatewayID.NotFound", "The internetGateway ID '{}' does not exist"),
    "nat": ("NatGatewayNotFound", "The Nat Gateway {} was not found"),
    "i": ("InvalidInstanceID.NotFound", "The instance ID '{}' does not exist"),
}
EC2_CREATES = {
    "CreateVpc": "vpcId", "CreateSubnet": "subnetId", "CreateSecurityGroup": "groupId", "CreateRouteTable": "routeTableId",
    "CreateInternetGateway": "internetGatewayId", "CreateNatGateway": "natGatewayId", "RunInstances": "instanceId",
}
# How long after a create a call naming the new id may still be refused (real seconds: the
# point is that the first such call is refused, so its retry is exercised).
FRESH_WINDOW = 5.0


class Refusal(Exception):
    def __init__(self, status, code, message, rule):
        super().__init__(message)
        self.status, self.code, self.message, self.rule = status, code, message, rule


class Answer:
    """A response the model gives itself."""

    def __init__(self, status, body=b"", content_type="application/json", rule=None):
        self.status, self.body, self.content_type, self.rule = status, body, content_type, rule


def local(tag):
    return tag.rsplit("}", 1)[-1]


def child(el, name):
    return next((c for c in el if local(c.tag) == name), None)


def text_of(el, *path):
    for name in path:
        if el is None:
            return None
        el = child(el, name)
    return el.text if el is not None else None


def xml_bytes(root):
    namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else None
    if namespace:
        ET.register_namespace("", namespace)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def set_child(el, name, value, namespace):
    node = child(el, name)
    if node is None:
        node = ET.SubElement(el, f"{{{namespace}}}{name}" if namespace else name)
    node.text = value
    return node


def now_epoch():
    return time.time()


class Request:
    """One call through the proxy, parsed for the rules."""

    def __init__(self, service, action, method, path, headers, body):
        self.service, self.action, self.method, self.body = service, action, method, body
        self.path = path
        self.url = urlparse(path)
        self.query = {k: v[0] for k, v in parse_qs(self.url.query).items()}
        self.form = {}
        self.json = None
        content_type = headers.get("Content-Type", "")
        if body and "x-www-form-urlencoded" in content_type:
            self.form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        elif body:
            try:
                self.json = json.loads(body)
            except ValueError:
                self.json = None
        auth = headers.get("Authorization", "")
        m = re.search(r"Credential=([^/]+)/[^/]+/([^/]+)/", auth)
        self.access_key = m.group(1) if m else "test"
        self.region = m.group(2) if m else "us-east-1"
        self.session_token = headers.get("X-Amz-Security-Token")

    def param_list(self, prefix):
        """EC2/ELB list parameters: Prefix.1, Prefix.member.1 ..."""
        values = []
        for key, value in self.form.items():
            if re.fullmatch(rf"{re.escape(prefix)}(\.member)?\.\d+", key):
                values.append(value)
        return values

    @property
    def who(self):
        return (self.access_key, self.region, self.session_token)


class Strict:
    def __init__(self, scale, moto_url, efs_root, control_path=None):
        self.scale = scale
        self.moto_url = moto_url
        self.efs_root = efs_root
        self.control_path = control_path
        self.lock = threading.RLock()
        self.tick_lock = threading.Lock()
        self.events = []  # (due, description, fn)
        self.born = {}  # id -> (kind, time)
        self.fresh = {}  # new EC2 id -> time created (read-after-create window, once)
        self.model_enis = {}  # eni id -> {"description", "interface_type", "public_ip", "requester_managed", "in_use"}
        self.lb_enis = {}  # load balancer arn -> [eni ids]
        self.function_enis = {}  # function name -> (eni id, role arn, who)
        self.roles_fresh = {}  # role arn or name -> set of rules still to fire
        self.certificates_refused = set()
        self.certificate_users = {}  # certificate arn -> set of listener arns
        self.certificate_released = {}  # certificate arn -> time it stops being in use
        self.listener_certificates = {}  # listener arn -> (certificate arn, load balancer arn)
        self.reserved_secrets = {}  # (account key, name) -> time free (None: until one refusal)
        self.slr_done = set()
        self.deferred = {}  # id -> (kind, due)
        self.nat_deleting = {}  # nat id -> due
        self.services = {}  # service arn -> dict
        self.tasks = {}  # task arn -> dict
        self.backup_jobs = {}
        self.restore_jobs = {}
        self.recovery_points = {}  # arn -> dict
        self.tokens = {}
        self.fired = []  # (rule, detail) for the capture
        self.accounts = {}  # credentials -> account
        self.function_mounts = {}  # function name -> file system id
        threading.Thread(target=self.run_events, daemon=True).start()

    # -- time -------------------------------------------------------------------------------

    def control(self):
        """Knobs a test may set (see Emulator::set_control): e.g. {"gitlab_first_boot": 100}."""
        if not self.control_path:
            return {}
        try:
            with open(self.control_path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def duration(self, rule):
        override = self.control().get(rule.replace("-", "_"))
        return (override if override is not None else RULES[rule][0]) * self.scale

    def at(self, delay, description, fn):
        with self.lock:
            self.events.append((time.monotonic() + delay, description, fn))

    def run_events(self):
        while True:
            time.sleep(0.01)
            self.tick()

    def tick(self):
        # One tick at a time (the background thread and every request tick): the scheduler must
        # not start two tasks for one missing.
        with self.tick_lock:
            self.tick_once()

    def tick_once(self):
        now = time.monotonic()
        with self.lock:
            due = [e for e in self.events if e[0] <= now]
            self.events = [e for e in self.events if e[0] > now]
            due.sort(key=lambda e: e[0])
        for _, description, fn in due:
            try:
                fn()
            except Exception as e:  # the model must never break the emulator
                print(f"strict model: {description}: {type(e).__name__}: {e}", file=sys.stderr)
        self.schedule_services()
        self.advance_tasks()

    def young(self, kind, ident):
        with self.lock:
            entry = self.born.get(ident)
        return entry is not None and entry[0] == kind and time.monotonic() - entry[1] < self.duration(kind)

    def note_born(self, kind, ident):
        with self.lock:
            self.born.setdefault(ident, (kind, time.monotonic()))

    # -- moto, directly -----------------------------------------------------------------------

    def client(self, service, who):
        access_key, region, token = who
        return boto3.client(
            service, endpoint_url=self.moto_url, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key="strict-model", aws_session_token=token, config=Config(retries={"max_attempts": 1}),
        )

    def account_of(self, who):
        with self.lock:
            known = self.accounts.get(who)
        if known is None:
            known = self.client("sts", who).get_caller_identity()["Account"]
            with self.lock:
                self.accounts[who] = known
        return known

    # -- the proxy's hooks ----------------------------------------------------------------------

    def before(self, req):
        """Raises Refusal, returns an Answer, or None to forward."""
        self.tick()
        handler = getattr(self, f"before_{req.service}", None)
        if handler:
            return handler(req)
        return None

    def after(self, req, status, data):
        if status >= 300:
            return data
        handler = getattr(self, f"after_{req.service}", None)
        if handler:
            try:
                return handler(req, data)
            except (ET.ParseError, ValueError, KeyError) as e:
                print(f"strict model: after {req.action}: {type(e).__name__}: {e}", file=sys.stderr)
        return data

    def refuse(self, status, code, message, rule):
        raise Refusal(status, code, message, rule)

    # =========================================================================================
    # EC2

    def ec2_fresh_refusal(self, req):
        """The first call naming a just-created id answers NotFound (read-after-create)."""
        for key, value in req.form.items():
            if key == "Action" or not isinstance(value, str):
                continue
            with self.lock:
                created = self.fresh.get(value)
                if created is None:
                    continue
                del self.fresh[value]
            if time.monotonic() - created > FRESH_WINDOW:
                continue
            prefix = value.split("-", 1)[0]
            code, message = EC2_NOT_FOUND[prefix]
            self.refuse(400, code, message.format(value), "ec2-read-after-create")

    def before_ec2(self, req):
        self.ec2_fresh_refusal(req)
        ec2 = lambda: self.client("ec2", req.who)  # noqa: E731
        action = req.action
        if action == "CreateSecurityGroup" and req.form.get("GroupName", "").startswith("sg-"):
            self.refuse(400, "InvalidParameterValue", "Group names may not be in the format sg-*", "security-group-name")
        if action == "DeleteSecurityGroup":
            group = req.form.get("GroupId")
            enis = ec2().describe_network_interfaces(Filters=[{"Name": "group-id", "Values": [group]}])["NetworkInterfaces"]
            referencing = [
                g["GroupId"] for g in ec2().describe_security_groups()["SecurityGroups"]
                if g["GroupId"] != group and any(p.get("GroupId") == group for r in g.get("IpPermissions", []) + g.get("IpPermissionsEgress", []) for p in r.get("UserIdGroupPairs", []))
            ]
            if enis or referencing:
                self.refuse(400, "DependencyViolation", f"resource {group} has a dependent object", "security-group-in-use")
        if action == "DeleteSubnet":
            subnet = req.form.get("SubnetId")
            if ec2().describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [subnet]}])["NetworkInterfaces"]:
                self.refuse(400, "DependencyViolation", f"The subnet '{subnet}' has dependencies and cannot be deleted.", "subnet-in-use")
        if action == "DeleteVpc":
            vpc = req.form.get("VpcId")
            by_vpc = [{"Name": "vpc-id", "Values": [vpc]}]
            inside = (
                ec2().describe_subnets(Filters=by_vpc)["Subnets"]
                or ec2().describe_network_interfaces(Filters=by_vpc)["NetworkInterfaces"]
                or ec2().describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc]}])["InternetGateways"]
                or [g for g in ec2().describe_security_groups(Filters=by_vpc)["SecurityGroups"] if g["GroupName"] != "default"]
                or [t for t in ec2().describe_route_tables(Filters=by_vpc)["RouteTables"] if not any(a.get("Main") for a in t.get("Associations", []))]
                or [n for n in ec2().describe_nat_gateways(Filter=by_vpc)["NatGateways"] if n["State"] not in ("deleted",)]
            )
            if inside:
                self.refuse(400, "DependencyViolation", f"The vpc '{vpc}' has dependencies and cannot be deleted.", "vpc-not-empty")
        if action == "DetachInternetGateway":
            vpc = req.form.get("VpcId")
            enis = ec2().describe_network_interfaces(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["NetworkInterfaces"]
            if any(self.public_ip_of(e) for e in enis):
                self.refuse(
                    400, "DependencyViolation",
                    f"Network {vpc} has some mapped public address(es). Please unmap those public address(es) before detaching the gateway.",
                    "gateway-mapped-addresses",
                )
        if action == "DeleteInternetGateway":
            igw = req.form.get("InternetGatewayId")
            gateways = ec2().describe_internet_gateways(InternetGatewayIds=[igw])["InternetGateways"] if igw else []
            if any(g.get("Attachments") for g in gateways):
                self.refuse(400, "DependencyViolation", f"The internetGateway '{igw}' has dependencies and cannot be deleted.", "gateway-attached")
        if action == "ReleaseAddress":
            allocation = req.form.get("AllocationId")
            addresses = ec2().describe_addresses(AllocationIds=[allocation])["Addresses"] if allocation else []
            if any(a.get("AssociationId") or a.get("NetworkInterfaceId") for a in addresses):
                self.refuse(400, "InvalidIPAddress.InUse", f"Address {addresses[0].get('PublicIp')} is in use.", "address-in-use")
        if action == "DeleteRouteTable":
            table = req.form.get("RouteTableId")
            tables = ec2().describe_route_tables(RouteTableIds=[table])["RouteTables"]
            if any(a.get("SubnetId") for t in tables for a in t.get("Associations", [])):
                self.refuse(400, "DependencyViolation", f"The routeTable '{table}' has dependencies and cannot be deleted.", "route-table-associated")
        if action == "RunInstances":
            self.refuse_unoffered_instance_type(req)
        if action == "DeleteNatGateway":
            return self.defer_nat_gateway_delete(req)
        if action == "TerminateInstances":
            return self.defer_instance_termination(req)
        return None

    def refuse_unoffered_instance_type(self, req):
        instance_type = req.form.get("InstanceType")
        subnet = req.form.get("SubnetId") or req.form.get("NetworkInterface.1.SubnetId")
        if not instance_type or not subnet:
            return
        ec2 = self.client("ec2", req.who)
        zone = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["AvailabilityZone"]
        offered = ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}]
        )["InstanceTypeOfferings"]
        zones = sorted(o["Location"] for o in offered)
        if zone not in zones:
            self.refuse(
                400, "Unsupported",
                f"Your requested instance type ({instance_type}) is not supported in your requested Availability Zone ({zone}). "
                f"Please retry your request by not specifying an Availability Zone or choosing {', '.join(zones)}.",
                "instance-type-not-offered",
            )

    def public_ip_of(self, eni):
        with self.lock:
            model = self.model_enis.get(eni["NetworkInterfaceId"])
        if model and model.get("public_ip"):
            return model["public_ip"]
        return (eni.get("Association") or {}).get("PublicIp")

    def after_ec2(self, req, data):
        action = req.action
        if action in EC2_CREATES:
            text = data.decode("utf-8", "replace")
            for m in re.finditer(rf"<{EC2_CREATES[action]}>([^<]+)</{EC2_CREATES[action]}>", text):
                with self.lock:
                    self.fresh.setdefault(m.group(1), time.monotonic())
                if action == "CreateNatGateway":
                    self.note_born("nat-gateway-pending", m.group(1))
                    for eni in re.findall(r"<networkInterfaceId>([^<]+)</networkInterfaceId>", text):
                        with self.lock:
                            self.model_enis[eni] = {"description": f"Interface for NAT Gateway {m.group(1)}",
                                                    "interface_type": "nat_gateway", "public_ip": None, "in_use": True}
                if action == "RunInstances":
                    self.note_born("instance-pending", m.group(1))
                    self.tag_launched_interfaces(req, text)
                    break  # the first instanceId is the instance (the rest are repeats)
            return data
        if action == "DescribeNetworkInterfaces":
            return self.rewrite_interfaces(data)
        if action == "DescribeNatGateways":
            return self.rewrite_ec2_states(data, "natGatewayId", ["state"], self.nat_gateway_state)
        if action == "DescribeInstances":
            return self.rewrite_ec2_states(data, "instanceId", ["instanceState", "name"], self.instance_state)
        return data

    def tag_launched_interfaces(self, req, text):
        """RunInstances' network-interface tag specification, which moto drops: AWS tags the
        interfaces it creates for the instance."""
        tags = []
        for key, value in req.form.items():
            m = re.fullmatch(r"TagSpecification\.(\d+)\.ResourceType", key)
            if m and value == "network-interface":
                n = m.group(1)
                i = 1
                while f"TagSpecification.{n}.Tag.{i}.Key" in req.form:
                    tags.append({"Key": req.form[f"TagSpecification.{n}.Tag.{i}.Key"], "Value": req.form.get(f"TagSpecification.{n}.Tag.{i}.Value", "")})
                    i += 1
        enis = sorted(set(re.findall(r"<networkInterfaceId>([^<]+)</networkInterfaceId>", text)))
        if tags and enis:
            self.client("ec2", req.who).create_tags(Resources=enis, Tags=tags)

    def nat_gateway_state(self, ident):
        with self.lock:
            deferred = self.deferred.get(ident)
        if deferred:
            return "deleting"
        return "pending" if self.young("nat-gateway-pending", ident) else None

    def instance_state(self, ident):
        with self.lock:
            deferred = self.deferred.get(ident)
        if deferred:
            return "shutting-down"
        return "pending" if self.young("instance-pending", ident) else None

    def rewrite_ec2_states(self, data, id_tag, path, state_of):
        root = ET.fromstring(data)
        changed = False
        for el in root.iter():
            ident = text_of(el, id_tag)
            if not ident or child(el, path[0]) is None:
                continue
            state = state_of(ident)
            if state is None:
                continue
            node = el
            for name in path:
                node = child(node, name)
                if node is None:
                    break
            if node is not None:
                node.text = state
                changed = True
        return xml_bytes(root) if changed else data

    def rewrite_interfaces(self, data):
        """Interfaces AWS services own look as AWS shows them: described, requester-managed,
        in use, with the public address they map."""
        root = ET.fromstring(data)
        namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else None
        changed = False
        for el in root.iter():
            ident = text_of(el, "networkInterfaceId")
            if not ident or child(el, "subnetId") is None:
                continue
            with self.lock:
                model = self.model_enis.get(ident)
            if not model:
                continue
            set_child(el, "description", model["description"], namespace)
            set_child(el, "requesterManaged", "true", namespace)
            set_child(el, "interfaceType", model.get("interface_type", "interface"), namespace)
            if model.get("in_use", True):
                set_child(el, "status", "in-use", namespace)
            if model.get("public_ip") and child(el, "association") is None:
                association = ET.SubElement(el, f"{{{namespace}}}association" if namespace else "association")
                set_child(association, "publicIp", model["public_ip"], namespace)
                set_child(association, "ipOwnerId", "amazon", namespace)
            changed = True
        return xml_bytes(root) if changed else data

    def new_interface(self, who, subnet, groups, description, interface_type="interface", public=False):
        """An interface an AWS service creates in the caller's VPC; returns (id, private ip)."""
        eni = self.client("ec2", who).create_network_interface(SubnetId=subnet, Groups=groups, Description=description)["NetworkInterface"]
        ident = eni["NetworkInterfaceId"]
        public_ip = None
        if public:
            n = len(self.model_enis) + 10
            public_ip = f"198.51.100.{n % 250}"
        with self.lock:
            self.model_enis[ident] = {
                "description": description, "interface_type": interface_type, "public_ip": public_ip, "in_use": True,
                "subnet": subnet, "groups": list(groups),
            }
        return ident, eni.get("PrivateIpAddress")

    def remove_interface(self, who, ident):
        with self.lock:
            known = self.model_enis.pop(ident, None)
        if known:
            # What it held, for whoever reads the capture (the benchmark matches it to refusals).
            held = " ".join([known.get("subnet") or "", *known.get("groups", [])]).strip()
            self.fired.append(("interface-released", f"{ident} holding {held}: {known['description']}"))
        try:
            self.client("ec2", who).delete_network_interface(NetworkInterfaceId=ident)
        except Exception:
            pass

    def defer_nat_gateway_delete(self, req):
        """AWS answers at once and deletes over a minute: the gateway reads 'deleting', keeps its
        interface in the public subnet and its Elastic IP associated."""
        ident = req.form.get("NatGatewayId")
        gateways = self.client("ec2", req.who).describe_nat_gateways(NatGatewayIds=[ident])["NatGateways"]
        if not gateways or gateways[0]["State"] in ("deleted", "deleting"):
            return None  # moto answers (not found / already deleted)
        with self.lock:
            if ident in self.deferred:
                return self.ec2_answer("DeleteNatGateway", f"<natGatewayId>{ident}</natGatewayId>")
            self.deferred[ident] = ("nat", time.monotonic())
        who = req.who

        def done():
            ec2 = self.client("ec2", who)
            gateway = ec2.describe_nat_gateways(NatGatewayIds=[ident])["NatGateways"][0]
            ec2.delete_nat_gateway(NatGatewayId=ident)
            for address in gateway.get("NatGatewayAddresses", []):
                if address.get("AllocationId"):
                    for a in ec2.describe_addresses(AllocationIds=[address["AllocationId"]])["Addresses"]:
                        if a.get("AssociationId"):
                            ec2.disassociate_address(AssociationId=a["AssociationId"])
                if address.get("NetworkInterfaceId"):
                    self.remove_interface(who, address["NetworkInterfaceId"])
            with self.lock:
                self.deferred.pop(ident, None)

        self.at(self.duration("nat-gateway-deleting"), f"NAT gateway {ident} deleted", done)
        return self.ec2_answer("DeleteNatGateway", f"<natGatewayId>{ident}</natGatewayId>", rule="nat-gateway-deleting")

    def defer_instance_termination(self, req):
        ids = req.param_list("InstanceId")
        if len(ids) != 1:
            return None
        ident = ids[0]
        reservations = self.client("ec2", req.who).describe_instances(InstanceIds=[ident])["Reservations"]
        instances = [i for r in reservations for i in r["Instances"]]
        if not instances or instances[0]["State"]["Name"] in ("terminated", "shutting-down"):
            return None
        previous = instances[0]["State"]
        with self.lock:
            already = ident in self.deferred
            self.deferred.setdefault(ident, ("instance", time.monotonic()))
        who = req.who

        def done():
            self.client("ec2", who).terminate_instances(InstanceIds=[ident])
            with self.lock:
                self.deferred.pop(ident, None)

        if not already:
            self.at(self.duration("instance-shutting-down"), f"instance {ident} terminated", done)
        body = (
            f"<instancesSet><item><instanceId>{ident}</instanceId><currentState><code>32</code><name>shutting-down</name></currentState>"
            f"<previousState><code>{previous['Code']}</code><name>{previous['Name']}</name></previousState></item></instancesSet>"
        )
        return self.ec2_answer("TerminateInstances", body, rule="instance-shutting-down")

    def ec2_answer(self, action, inner, rule=None):
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>"
        ).encode()
        return Answer(200, body, "text/xml", rule=rule)

    # =========================================================================================
    # Elastic Load Balancing

    def before_elasticloadbalancing(self, req):
        if req.action in ("CreateListener", "ModifyListener"):
            for cert in [v for k, v in req.form.items() if re.fullmatch(r"Certificates\.member\.\d+\.CertificateArn", k)]:
                with self.lock:
                    first = cert not in self.certificates_refused
                    self.certificates_refused.add(cert)
                if first:
                    self.refuse(400, "CertificateNotFound", f"Certificate '{cert}' not found", "listener-certificate-not-found")
        if req.action == "DeleteListener":
            listener = req.form.get("ListenerArn")
            with self.lock:
                used = self.listener_certificates.pop(listener, None)
            if used:
                self.release_certificate(used[0], listener)
        if req.action == "DeleteLoadBalancer":
            arn = req.form.get("LoadBalancerArn")
            with self.lock:
                listeners = [l for l, (_, lb) in self.listener_certificates.items() if lb == arn]
                used = [(self.listener_certificates.pop(l)[0], l) for l in listeners]
            for cert, listener in used:
                self.release_certificate(cert, listener)
        return None

    def release_certificate(self, cert, listener):
        with self.lock:
            users = self.certificate_users.get(cert, set())
            users.discard(listener)
            self.certificate_released[cert] = time.monotonic() + self.duration("certificate-in-use-after-listener")

    def after_elasticloadbalancing(self, req, data):
        if req.action == "CreateLoadBalancer":
            root = ET.fromstring(data)
            for lb in root.iter():
                if local(lb.tag) != "member" or text_of(lb, "LoadBalancerArn") is None:
                    continue
                arn = text_of(lb, "LoadBalancerArn")
                self.note_born("load-balancer-provisioning", arn)
                with self.lock:
                    if arn in self.lb_enis:
                        continue
                kind = "net" if text_of(lb, "Type") == "network" else "app"
                name, suffix = arn.split("/")[-2], arn.split("/")[-1]
                public = text_of(lb, "Scheme") != "internal"
                groups = req.param_list("SecurityGroups")
                enis = []
                for subnet in req.param_list("Subnets"):
                    ident, _ = self.new_interface(
                        req.who, subnet, groups, f"ELB {kind}/{name}/{suffix}",
                        "network_load_balancer" if kind == "net" else "interface", public,
                    )
                    enis.append(ident)
                with self.lock:
                    self.lb_enis[arn] = enis
            return data
        if req.action == "DeleteLoadBalancer":
            arn = req.form.get("LoadBalancerArn")
            with self.lock:
                enis = self.lb_enis.pop(arn, [])
            who = req.who
            for ident in enis:
                self.at(self.duration("load-balancer-interfaces-linger"), f"load balancer interface {ident} released",
                        lambda ident=ident: self.remove_interface(who, ident))
            return data
        if req.action == "CreateListener":
            certs = [v for k, v in req.form.items() if re.fullmatch(r"Certificates\.member\.\d+\.CertificateArn", k)]
            listener = re.search(r"<ListenerArn>([^<]+)</ListenerArn>", data.decode("utf-8", "replace"))
            if certs and listener:
                with self.lock:
                    self.listener_certificates[listener.group(1)] = (certs[0], req.form.get("LoadBalancerArn"))
                    self.certificate_users.setdefault(certs[0], set()).add(listener.group(1))
            return data
        if req.action == "DescribeLoadBalancers":
            return self.rewrite_load_balancer_states(data)
        if req.action == "DescribeTargetHealth":
            return self.rewrite_target_health(data)
        return data

    def rewrite_load_balancer_states(self, data):
        root = ET.fromstring(data)
        changed = False
        for el in root.iter():
            arn = text_of(el, "LoadBalancerArn")
            if arn and self.young("load-balancer-provisioning", arn):
                code = child(child(el, "State"), "Code") if child(el, "State") is not None else None
                if code is not None:
                    code.text = "provisioning"
                    changed = True
        return xml_bytes(root) if changed else data

    # =========================================================================================
    # ACM

    def before_acm(self, req):
        if req.action == "DeleteCertificate":
            arn = (req.json or {}).get("CertificateArn")
            with self.lock:
                users = self.certificate_users.get(arn) or set()
                released = self.certificate_released.get(arn)
            if users or (released and time.monotonic() < released):
                account = arn.split(":")[4] if arn and arn.count(":") >= 5 else "?"
                self.refuse(400, "ResourceInUseException", f"Certificate {arn} in account {account} is in use.", "certificate-in-use-after-listener")
        return None

    # =========================================================================================
    # Secrets Manager

    def before_secretsmanager(self, req):
        body = req.json or {}
        key = (req.access_key, req.region, body.get("Name") or body.get("SecretId"))
        if req.action == "CreateSecret":
            with self.lock:
                reserved = key in self.reserved_secrets
                free_at = self.reserved_secrets.get(key)
                if reserved and free_at is not None and time.monotonic() >= free_at:
                    self.reserved_secrets.pop(key, None)
                    reserved = False
                elif reserved:
                    # After one refusal the name frees at its modelled time.
                    self.reserved_secrets[key] = free_at or time.monotonic() + self.duration("secret-name-reserved")
            if reserved:
                self.refuse(
                    400, "InvalidRequestException",
                    "You can't create this secret because a secret with this name is already scheduled for deletion.",
                    "secret-name-reserved",
                )
        return None

    def after_secretsmanager(self, req, data):
        body = req.json or {}
        if req.action == "DeleteSecret" and body.get("ForceDeleteWithoutRecovery"):
            name = json.loads(data).get("Name") or body.get("SecretId")
            with self.lock:
                self.reserved_secrets[(req.access_key, req.region, name)] = None
        return data

    # =========================================================================================
    # IAM and Lambda

    def after_iam(self, req, data):
        if req.action == "CreateRole":
            with self.lock:
                self.roles_fresh[req.form.get("RoleName")] = {"lambda-role-not-assumable", "lambda-role-no-vpc-permission"}
        return data

    def before_lambda(self, req):
        if req.method == "POST" and req.url.path.rstrip("/") == "/2015-03-31/functions":
            config = req.json or {}
            role = (config.get("Role") or "").rsplit("/", 1)[-1]
            with self.lock:
                pending = self.roles_fresh.get(role, set())
                rule = None
                for candidate in ("lambda-role-not-assumable", "lambda-role-no-vpc-permission"):
                    if candidate in pending and (candidate == "lambda-role-not-assumable" or (config.get("VpcConfig") or {}).get("SubnetIds")):
                        pending.discard(candidate)
                        rule = candidate
                        break
            if rule == "lambda-role-not-assumable":
                self.refuse(400, "InvalidParameterValueException", "The role defined for the function cannot be assumed by Lambda.", rule)
            if rule == "lambda-role-no-vpc-permission":
                self.refuse(400, "InvalidParameterValueException", "The provided execution role does not have permissions to call CreateNetworkInterface on EC2", rule)
        return None

    def after_lambda(self, req, data):
        path = req.url.path
        if req.method == "POST" and path.rstrip("/") == "/2015-03-31/functions":
            config = json.loads(req.body)
            self.note_born("function-pending", config["FunctionName"])
            # moto drops FileSystemConfigs: the file system the function mounts is kept here.
            mounts = config.get("FileSystemConfigs") or []
            if mounts:
                point = mounts[0]["Arn"].rsplit("/", 1)[-1]
                points = self.client("efs", req.who).describe_access_points(AccessPointId=point)["AccessPoints"]
                with self.lock:
                    self.function_mounts[config["FunctionName"]] = points[0]["FileSystemId"] if points else None
            vpc = config.get("VpcConfig") or {}
            if vpc.get("SubnetIds"):
                ident, _ = self.new_interface(
                    req.who, vpc["SubnetIds"][0], vpc.get("SecurityGroupIds", []),
                    f"AWS Lambda VPC ENI-{config['FunctionName']}-{uuid.uuid4()}", "lambda",
                )
                with self.lock:
                    self.function_enis[config["FunctionName"]] = (ident, config.get("Role"), req.who)
            return data
        m = re.match(r"^/2015-03-31/functions/([^/?]+)$", path)
        if req.method == "DELETE" and m:
            with self.lock:
                entry = self.function_enis.pop(unquote(m.group(1)), None)
            if entry:
                ident, role, who = entry
                self.at(self.duration("lambda-interfaces-linger"), f"Lambda interface {ident} released",
                        lambda: self.release_lambda_interface(ident, role, who))
            return data
        if req.method == "GET" and m and self.young("function-pending", unquote(m.group(1))):
            doc = json.loads(data)
            target = doc.get("Configuration", doc)
            target["State"] = "Pending"
            return json.dumps(doc).encode()
        return data

    def release_lambda_interface(self, ident, role_arn, who):
        """Lambda deletes the interface with the function's role: gone or stripped of its VPC
        permissions, the interface stays in use (and holds its group and subnet) for good."""
        role = (role_arn or "").rsplit("/", 1)[-1]
        iam = self.client("iam", who)
        try:
            attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        except Exception:
            attached = None
        if not attached or not any("VPCAccess" in p["PolicyArn"] for p in attached):
            self.fired.append(("lambda-interfaces-need-the-role", ident))
            return
        self.remove_interface(who, ident)

    def function_file_system(self, req, name):
        """The file system a function mounts (through its access point)."""
        with self.lock:
            return self.function_mounts.get(name)

    def lambda_invoked(self, req, name):
        """Lambda's side effect on invoke: its log group, through the role's CreateLogGroup."""
        self.ensure_log_group(req.who, f"/aws/lambda/{name}", "lambda-log-group")

    def ensure_log_group(self, who, name, rule):
        logs = self.client("logs", who)
        if not any(g["logGroupName"] == name for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]):
            try:
                logs.create_log_group(logGroupName=name)
                self.fired.append((rule, name))
            except Exception:
                pass

    # =========================================================================================
    # EFS

    def efs_dir(self, fs_id):
        path = os.path.join(self.efs_root, fs_id)
        os.makedirs(path, exist_ok=True)
        return path

    def before_elasticfilesystem(self, req):
        m = re.match(r"^/2015-02-01/file-systems/([^/?]+)$", req.url.path)
        if req.method == "PUT" and m:
            return self.update_file_system(req, m.group(1))
        m = re.match(r"^/2015-02-01/file-systems/([^/?]+)/backup-policy$", req.url.path)
        if req.method == "PUT" and m:
            return self.put_backup_policy(req, m.group(1))
        m = re.match(r"^/2015-02-01/mount-targets/([^/?]+)$", req.url.path)
        if req.method == "DELETE" and m:
            ident = m.group(1)
            with self.lock:
                if ident in self.deferred:
                    return Answer(204, b"", rule="mount-target-deleting")
            targets = self.client("efs", req.who).describe_mount_targets(MountTargetId=ident)["MountTargets"] if ident else []
            if not targets:
                return None
            with self.lock:
                self.deferred[ident] = ("mount-target", time.monotonic())
            who = req.who

            def done():
                self.client("efs", who).delete_mount_target(MountTargetId=ident)
                with self.lock:
                    self.deferred.pop(ident, None)

            self.at(self.duration("mount-target-deleting"), f"mount target {ident} deleted", done)
            return Answer(204, b"", rule="mount-target-deleting")
        return None

    def update_file_system(self, req, ident):
        """UpdateFileSystem, which moto lacks: the throughput mode changes in moto's own record."""
        from moto.efs.models import efs_backends

        body = req.json or {}
        backend = efs_backends[self.account_of(req.who)][req.region]
        fs = backend.file_systems_by_id.get(ident)
        if fs is None:
            self.refuse(404, "FileSystemNotFound", f"File system '{ident}' does not exist.", "update-file-system")
        if body.get("ThroughputMode"):
            fs.throughput_mode = body["ThroughputMode"]
        described = self.client("efs", req.who).describe_file_systems(FileSystemId=ident)["FileSystems"][0]
        epoch = lambda value: value.timestamp() if hasattr(value, "timestamp") else str(value)  # noqa: E731
        return Answer(202, json.dumps(described, default=epoch).encode(), rule="update-file-system")

    def put_backup_policy(self, req, ident):
        """PutBackupPolicy, which moto lacks: the file system's automatic backups on or off."""
        from moto.efs.models import efs_backends

        status = ((req.json or {}).get("BackupPolicy") or {}).get("Status", "ENABLED")
        fs = efs_backends[self.account_of(req.who)][req.region].file_systems_by_id.get(ident)
        if fs is None:
            self.refuse(404, "FileSystemNotFound", f"File system '{ident}' does not exist.", "update-file-system")
        fs._backup = status == "ENABLED"
        return Answer(200, json.dumps({"BackupPolicy": {"Status": status}}).encode(), rule="update-file-system")

    def after_elasticfilesystem(self, req, data):
        path = req.url.path
        if req.method == "POST" and path.startswith("/2015-02-01/file-systems"):
            self.note_born("file-system-creating", json.loads(data)["FileSystemId"])
            return data
        if req.method == "POST" and path.startswith("/2015-02-01/mount-targets"):
            target = json.loads(data)
            self.note_born("mount-target-creating", target["MountTargetId"])
            if target.get("NetworkInterfaceId"):
                with self.lock:
                    self.model_enis[target["NetworkInterfaceId"]] = {
                        "description": f"EFS mount target for {target['FileSystemId']} ({target['MountTargetId']})",
                        "interface_type": "efs", "public_ip": None, "in_use": True,
                    }
            return data
        if req.method == "GET" and path.startswith("/2015-02-01/file-systems"):
            return self.rewrite_json_states(data, "FileSystems", "FileSystemId", "LifeCycleState",
                                            lambda i: "creating" if self.young("file-system-creating", i) else None)
        if req.method == "GET" and path.startswith("/2015-02-01/mount-targets"):
            return self.rewrite_json_states(data, "MountTargets", "MountTargetId", "LifeCycleState", self.mount_target_state)
        return data

    def mount_target_state(self, ident):
        with self.lock:
            if ident in self.deferred:
                return "deleting"
        return "creating" if self.young("mount-target-creating", ident) else None

    def rewrite_json_states(self, data, list_field, id_field, state_field, state_of):
        doc = json.loads(data)
        items = doc.get(list_field)
        if items is None:
            items = [doc]
        changed = False
        for item in items:
            state = state_of(item.get(id_field, ""))
            if state:
                item[state_field] = state
                changed = True
        return json.dumps(doc).encode() if changed else data

    # =========================================================================================
    # ECS on Fargate: services run tasks; tasks have a life; ECS registers them with the target
    # groups; GitLab boots; ECS stops what fails its health checks.

    def before_ecs(self, req):
        body = req.json or {}
        action = req.action
        if action == "CreateService":
            account = self.account_of(req.who)
            with self.lock:
                first = account not in self.slr_done
                self.slr_done.add(account)
            if first and body.get("loadBalancers"):
                self.refuse(400, "InvalidParameterException",
                            "Unable to assume the service linked role. Please verify that the ECS service linked role exists.",
                            "ecs-service-linked-role")
        if action == "DeleteCluster":
            cluster = body.get("cluster", "")
            with self.lock:
                active = [t for t in self.tasks.values() if self.same_cluster(t["cluster"], cluster) and t["last"] != "STOPPED"]
            if active:
                self.refuse(400, "ClusterContainsTasksException", "The Cluster cannot be deleted while Tasks are active.", "cluster-contains-tasks")
        if action == "ListTasks":
            return self.list_tasks(body)
        if action == "DescribeTasks":
            return self.describe_tasks(body)
        if action == "ExecuteCommand":
            return self.execute_command(req, body)
        return None

    @staticmethod
    def same_cluster(arn, name):
        return arn == name or arn.rsplit("/", 1)[-1] == name

    def after_ecs(self, req, data):
        action = req.action
        if action in ("CreateService", "UpdateService"):
            service = json.loads(data).get("service")
            if service:
                self.service_changed(req, service, action == "CreateService")
            return data
        if action == "DeleteService":
            service = json.loads(data).get("service")
            if service:
                with self.lock:
                    model = self.services.get(service["serviceArn"])
                    if model:
                        model["desired"] = 0
                        model["deleted"] = True
                        for task in self.tasks.values():
                            if task["service"] == model["arn"] and task["desired"] == "RUNNING":
                                self.stop_task(task, "ServiceSchedulerInitiated", "Service deletion")
            return data
        if action == "DescribeServices":
            return self.rewrite_services(data)
        return data

    def service_changed(self, req, service, created):
        arn = service["serviceArn"]
        body = req.json or {}
        with self.lock:
            model = self.services.get(arn)
            if model is None:
                model = {
                    "arn": arn, "name": service["serviceName"], "cluster": service["clusterArn"], "who": req.who,
                    "deployments": [], "events": [], "deleted": False,
                }
                self.services[arn] = model
            # moto drops some of what the request sets: the request is the truth for those.
            def setting(name, default):
                if name in body:
                    return body[name]
                if name in service:
                    return service[name]
                return model.get(name, default)

            model["desired"] = service.get("desiredCount", 0)
            model["network"] = setting("networkConfiguration", None)
            model["load_balancers"] = setting("loadBalancers", [])
            model["grace"] = setting("healthCheckGracePeriodSeconds", 0)
            model["exec"] = setting("enableExecuteCommand", False)
            for name in ("networkConfiguration", "loadBalancers", "healthCheckGracePeriodSeconds", "enableExecuteCommand"):
                model[name] = setting(name, None)
            new_definition = service["taskDefinition"]
            current = model["deployments"][0] if model["deployments"] else None
            if created or current is None or current["task_definition"] != new_definition or body.get("forceNewDeployment"):
                if current and current["rollout"] == "IN_PROGRESS":
                    current["rollout"] = "COMPLETED"
                deployment = {
                    "id": f"ecs-svc/{uuid.uuid4().int % 10**19}", "task_definition": new_definition, "rollout": "IN_PROGRESS",
                    "reason": "ECS deployment in progress.", "failed": 0, "created": now_epoch(),
                }
                model["deployments"].insert(0, deployment)
                self.event(model, f"(service {model['name']}) has started a deployment {deployment['id']}.")
                # Minimum 0% / maximum 100%: the old task stops before the new one starts.
                for task in self.tasks.values():
                    if task["service"] == arn and task["desired"] == "RUNNING" and task["deployment"] != deployment["id"]:
                        self.stop_task(task, "ServiceSchedulerInitiated", "Deployment replaced this task")
            if model["desired"] == 0:
                for task in self.tasks.values():
                    if task["service"] == arn and task["desired"] == "RUNNING":
                        self.stop_task(task, "ServiceSchedulerInitiated", "Scaling activity initiated by (deployment)")

    def event(self, service, message):
        service["events"].insert(0, {"id": str(uuid.uuid4()), "createdAt": now_epoch(), "message": message})

    def schedule_services(self):
        """The ECS scheduler: starts tasks for services below their desired count, once the old
        deployment's tasks have stopped (minimum healthy 0%, maximum 100%)."""
        with self.lock:
            services = list(self.services.values())
        for service in services:
            with self.lock:
                deployment = service["deployments"][0] if service["deployments"] else None
                if not deployment or service["deleted"] or deployment["rollout"] == "FAILED":
                    continue
                mine = [t for t in self.tasks.values() if t["service"] == service["arn"]]
                running = [t for t in mine if t["desired"] == "RUNNING"]
                old_alive = [t for t in mine if t["deployment"] != deployment["id"] and t["last"] != "STOPPED"]
                need = service["desired"] - len(running)
            if need > 0 and not old_alive:
                for _ in range(need):
                    self.start_task(service, deployment)

    def start_task(self, service, deployment):
        who = service["who"]
        network = (service.get("network") or {}).get("awsvpcConfiguration") or {}
        subnets = network.get("subnets") or []
        if not subnets:
            return
        task_id = uuid.uuid4().hex
        cluster = service["cluster"]
        account, region = cluster.split(":")[4], cluster.split(":")[3]
        arn = f"arn:aws:ecs:{region}:{account}:task/{cluster.rsplit('/', 1)[-1]}/{task_id}"
        subnet = subnets[len(self.tasks) % len(subnets)]
        definition = self.client("ecs", who).describe_task_definition(taskDefinition=deployment["task_definition"])["taskDefinition"]
        eni, ip = self.new_interface(who, subnet, network.get("securityGroups", []), f"arn:aws:ecs:{region}:{account}:attachment/{uuid.uuid4()}")
        task = {
            "arn": arn, "id": task_id, "cluster": cluster, "service": service["arn"], "deployment": deployment["id"],
            "task_definition": deployment["task_definition"], "definition": definition,
            "container": definition["containerDefinitions"][0]["name"], "eni": eni, "ip": ip, "subnet": subnet, "who": who,
            "last": "PROVISIONING", "desired": "RUNNING", "created": now_epoch(), "started": None, "stopping": None,
            "stopped": None, "reason": None, "stop_code": None, "exit_code": None,
            "runtime_id": f"{task_id}-{uuid.uuid4().int % 10**10}", "registered": [], "grace": service.get("grace", 0),
            "next": time.monotonic() + self.duration("task-provisioning"),
        }
        with self.lock:
            self.tasks[arn] = task
            self.event(service, f"(service {service['name']}) has started 1 tasks: (task {task_id}).")

    def stop_task(self, task, stop_code, reason, exit_code=None):
        """DEACTIVATING (its targets draining) -> STOPPING -> DEPROVISIONING -> STOPPED."""
        if task["desired"] == "STOPPED":
            return
        task.update(desired="STOPPED", reason=reason, stop_code=stop_code, exit_code=exit_code, stopping=now_epoch())
        if task["last"] in ("PROVISIONING", "PENDING"):
            task["last"] = "DEPROVISIONING"
            task["next"] = time.monotonic() + self.duration("task-deprovisioning")
        else:
            task["last"] = "DEACTIVATING"
            task["next"] = time.monotonic() + (self.duration("deregistration-delay") if task["registered"] else 0)

    def advance_tasks(self):
        with self.lock:
            tasks = [t for t in self.tasks.values() if t["last"] != "STOPPED"]
        for task in tasks:
            try:
                self.advance_task(task)
            except Exception as e:
                print(f"strict model: task {task['id']}: {type(e).__name__}: {e}", file=sys.stderr)

    def advance_task(self, task):
        now = time.monotonic()
        if now < task["next"]:
            return
        last = task["last"]
        if last == "PROVISIONING":
            problem = self.mount_problem(task)
            with self.lock:
                if problem:
                    self.fired.append(("efs-mount-needs-dns-and-directory", task["id"]))
                    self.fail_task(task, "TaskFailedToStart", problem)
                    return
                task["last"] = "PENDING"
                task["pull_error"] = self.control().get("pull_error")
                task["next"] = now + self.duration("image-pull") / (3 if task["pull_error"] else 1)
        elif last == "PENDING":
            if task.get("pull_error"):
                with self.lock:
                    self.fail_task(task, "TaskFailedToStart", f"CannotPullContainerError: {task['pull_error']}")
                return
            self.task_running(task, now)
        elif last == "RUNNING":
            with self.lock:
                if task["desired"] != "RUNNING":
                    return
                if task.get("kill_at") is not None and now >= task["kill_at"]:
                    tg = task["registered"][0]["tg"] if task["registered"] else "?"
                    self.fail_task(task, "ServiceSchedulerInitiated", f"Task failed ELB health checks in (target-group {tg})", exit_code=137)
                    return
                booted = now >= task["boot_done"] and not task.get("booted")
                healthy = now >= task["healthy_at"] and not task.get("reported_healthy")
                if healthy:
                    task["reported_healthy"] = True
                    self.deployment_healthy(task)
                pending = [t for t in (task.get("kill_at"), task["boot_done"] if not task.get("booted") else None,
                                       task["healthy_at"] if not task.get("reported_healthy") else None) if t is not None and t > now]
                task["next"] = min(pending) if pending else float("inf")
            if booted:
                task["booted"] = True
                self.gitlab_booted(task)
        elif last == "DEACTIVATING":
            self.deregister_targets(task)
            with self.lock:
                task["last"] = "STOPPING"
                task["next"] = now + self.duration("gitlab-stop")
        elif last == "STOPPING":
            with self.lock:
                task["last"] = "DEPROVISIONING"
                task["next"] = now + self.duration("task-deprovisioning")
                if task["exit_code"] is None:
                    task["exit_code"] = 0
        elif last == "DEPROVISIONING":
            self.remove_interface(task["who"], task["eni"])
            with self.lock:
                task["last"] = "STOPPED"
                task["stopped"] = now_epoch()
                task["next"] = float("inf")

    def task_running(self, task, now):
        """The container started: ECS registers it with the target groups; GitLab boots (longer
        the first time, on an empty file system); the load balancer checks it every 30 s."""
        first = not os.path.exists(os.path.join(self.data_dir(task), ".gitlab-initialized"))
        boot = self.duration("gitlab-first-boot" if first else "gitlab-boot")
        check = self.duration("health-check")
        boot_done = now + boot
        healthy_at = boot_done + 2 * check
        unhealthy_at = now + 10 * check
        grace_end = now + task["grace"] * self.scale
        kill_at = None
        if boot_done > unhealthy_at and max(grace_end, unhealthy_at) < healthy_at:
            kill_at = max(grace_end, unhealthy_at)
        if task["desired"] != "RUNNING":
            return
        self.register_targets(task)
        self.container_insights(task)
        image = task["definition"]["containerDefinitions"][0]["image"]
        self.write_logs(task, ["Thank you for using GitLab Docker Image!", f"Current image: {image}",
                               "Configuring GitLab for the first time..." if first else "Starting GitLab..."])
        with self.lock:
            if task["desired"] != "RUNNING":
                return  # stopped while it was starting: its stop goes on from where stop_task put it
            task.update(last="RUNNING", started=now_epoch(), boot_done=boot_done, healthy_at=healthy_at,
                        unhealthy_at=unhealthy_at if boot_done > unhealthy_at else None, kill_at=kill_at)
            task["next"] = min(t for t in (kill_at, boot_done) if t is not None)

    def fail_task(self, task, stop_code, reason, exit_code=None):
        self.stop_task(task, stop_code, reason, exit_code)
        self.fired.append(("failed-health-checks" if "health checks" in reason else "task-failed", reason))
        service = self.services.get(task["service"])
        if not service:
            return
        deployment = next((d for d in service["deployments"] if d["id"] == task["deployment"]), None)
        if deployment is None:
            return
        deployment["failed"] += 1
        self.event(service, f"(service {service['name']}) has stopped 1 running tasks: (task {task['id']}). Reason: {reason}")
        if deployment["failed"] >= 3 and deployment["rollout"] == "IN_PROGRESS":
            deployment["rollout"] = "FAILED"
            deployment["reason"] = "ECS deployment circuit breaker: tasks failed to start."
            self.event(service, f"(service {service['name']}) (deployment {deployment['id']}) deployment failed: tasks failed to start.")

    def deployment_healthy(self, task):
        service = self.services.get(task["service"])
        if not service:
            return
        for deployment in service["deployments"]:
            if deployment["id"] == task["deployment"] and deployment["rollout"] == "IN_PROGRESS":
                deployment["rollout"] = "COMPLETED"
                deployment["reason"] = "ECS deployment completed."
                self.event(service, f"(service {service['name']}) has reached a steady state.")

    def data_dir(self, task):
        volume = self.gitlab_volume(task, "/var/opt/gitlab")
        if not volume:
            return self.efs_root
        fs, root = volume
        return os.path.join(self.efs_dir(fs), root.strip("/"))

    def gitlab_volume(self, task, container_path):
        """(file system, root directory) of the volume mounted at container_path."""
        definition = task["definition"]
        container = definition["containerDefinitions"][0]
        source = next((m["sourceVolume"] for m in container.get("mountPoints", []) if m["containerPath"] == container_path), None)
        volume = next((v for v in definition.get("volumes", []) if v["name"] == source), None)
        config = (volume or {}).get("efsVolumeConfiguration")
        if not config:
            return None
        return config["fileSystemId"], config.get("rootDirectory", "/")

    def mount_problem(self, task):
        """Why the task's EFS volumes would not mount, in ECS's words; None when they would."""
        who = task["who"]
        ec2 = self.client("ec2", who)
        subnet = ec2.describe_subnets(SubnetIds=[task["subnet"]])["Subnets"][0]
        vpc = subnet["VpcId"]
        for attribute, key in (("enableDnsSupport", "EnableDnsSupport"), ("enableDnsHostnames", "EnableDnsHostnames")):
            value = ec2.describe_vpc_attribute(VpcId=vpc, Attribute=attribute)[key]["Value"]
            volumes = [v for v in task["definition"].get("volumes", []) if v.get("efsVolumeConfiguration")]
            if not value and volumes:
                fs = volumes[0]["efsVolumeConfiguration"]["fileSystemId"]
                return (f"ResourceInitializationError: failed to invoke EFS utils commands to set up EFS volumes: stderr: "
                        f"Failed to resolve \"{fs}.efs.{task['cluster'].split(':')[3]}.amazonaws.com\"")
        for volume in task["definition"].get("volumes", []):
            config = volume.get("efsVolumeConfiguration")
            if not config:
                continue
            root = config.get("rootDirectory", "/")
            if not os.path.isdir(os.path.join(self.efs_dir(config["fileSystemId"]), root.strip("/"))):
                return (f"ResourceInitializationError: failed to invoke EFS utils commands to set up EFS volumes: stderr: "
                        f"b'mount.nfs4: access denied by server while mounting 127.0.0.1:{root}'")
        return None

    def gitlab_booted(self, task):
        """What GitLab leaves on its volumes after booting: initialized data and, in /etc/gitlab,
        the SSH host keys it generated on first boot (kept when they exist)."""
        data = self.data_dir(task)
        os.makedirs(data, exist_ok=True)
        open(os.path.join(data, ".gitlab-initialized"), "a").close()
        config = self.gitlab_volume(task, "/etc/gitlab")
        if config:
            directory = os.path.join(self.efs_dir(config[0]), config[1].strip("/"))
            os.makedirs(directory, exist_ok=True)
            for kind in ("rsa", "ecdsa", "ed25519"):
                key = os.path.join(directory, f"ssh_host_{kind}_key")
                if not os.path.exists(key):
                    with open(key, "w") as f:
                        f.write(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{uuid.uuid4().hex}\n-----END OPENSSH PRIVATE KEY-----\n")
        self.write_logs(task, ["gitlab Reconfigured!", "==> /var/log/gitlab/gitlab-rails/production.log <==", "Puma started"])

    def register_targets(self, task):
        service = self.services.get(task["service"])
        elb = self.client("elbv2", task["who"])
        for lb in (service or {}).get("load_balancers", []):
            tg = lb.get("targetGroupArn")
            if not tg:
                continue
            elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": task["ip"], "Port": lb["containerPort"]}])
            task["registered"].append({"tg": tg, "port": lb["containerPort"], "state": "initial"})

    def deregister_targets(self, task):
        elb = self.client("elbv2", task["who"])
        for target in task["registered"]:
            try:
                elb.deregister_targets(TargetGroupArn=target["tg"], Targets=[{"Id": task["ip"], "Port": target["port"]}])
            except Exception:
                pass
        task["registered"] = []

    def target_state(self, ip):
        """How the load balancer sees the task at `ip`: (state, reason, description)."""
        now = time.monotonic()
        with self.lock:
            task = next((t for t in self.tasks.values() if t["ip"] == ip and t["registered"]), None)
        if task is None:
            return None
        if task["desired"] == "STOPPED":
            return ("draining", "Target.DeregistrationInProgress", "Target deregistration is in progress")
        if now >= task["healthy_at"]:
            return ("healthy", None, None)
        if task.get("unhealthy_at") is not None and now >= task["unhealthy_at"]:
            return ("unhealthy", "Target.ResponseCodeMismatch", "Health checks failed with these codes: [502]")
        return ("initial", "Elb.InitialHealthChecking", "Initial health checks in progress")

    def rewrite_target_health(self, data):
        root = ET.fromstring(data)
        namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else None
        changed = False
        for el in root.iter():
            target = child(el, "Target")
            health = child(el, "TargetHealth")
            if target is None or health is None:
                continue
            state = self.target_state(text_of(target, "Id"))
            if state is None:
                continue
            for name in ("State", "Reason", "Description"):
                node = child(health, name)
                if node is not None:
                    health.remove(node)
            set_child(health, "State", state[0], namespace)
            if state[1]:
                set_child(health, "Reason", state[1], namespace)
                set_child(health, "Description", state[2], namespace)
            changed = True
        return xml_bytes(root) if changed else data

    def container_insights(self, task):
        ecs = self.client("ecs", task["who"])
        clusters = ecs.describe_clusters(clusters=[task["cluster"]], include=["SETTINGS"])["clusters"]
        settings = clusters[0].get("settings", []) if clusters else []
        if any(s.get("name") == "containerInsights" and s.get("value") in ("enabled", "enhanced") for s in settings):
            name = task["cluster"].rsplit("/", 1)[-1]
            self.ensure_log_group(task["who"], f"/aws/ecs/containerinsights/{name}/performance", "container-insights-log-group")

    def write_logs(self, task, lines):
        options = (task["definition"]["containerDefinitions"][0].get("logConfiguration") or {}).get("options") or {}
        group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
        if not group:
            return
        stream = f"{prefix}/{task['container']}/{task['id']}" if prefix else task["id"]
        logs = self.client("logs", task["who"])
        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except Exception:
            pass
        stamp = int(time.time() * 1000)
        try:
            logs.put_log_events(logGroupName=group, logStreamName=stream,
                                logEvents=[{"timestamp": stamp + i, "message": line} for i, line in enumerate(lines)])
        except Exception as e:
            print(f"strict model: logs: {e}", file=sys.stderr)

    def task_json(self, task):
        container = {
            "containerArn": f"{task['arn'].replace(':task/', ':container/')}/{task['container']}", "taskArn": task["arn"],
            "name": task["container"], "lastStatus": task["last"] if task["last"] in ("PENDING", "RUNNING", "STOPPED") else ("PENDING" if task["last"] == "PROVISIONING" else "RUNNING"),
            "runtimeId": task["runtime_id"] if task["last"] != "PROVISIONING" else None,
            "networkInterfaces": [{"attachmentId": task["eni"], "privateIpv4Address": task["ip"]}],
        }
        if task["last"] == "STOPPED" and task["exit_code"] is not None:
            container["exitCode"] = task["exit_code"]
        doc = {
            "taskArn": task["arn"], "clusterArn": task["cluster"], "taskDefinitionArn": task["task_definition"],
            "group": f"service:{self.services[task['service']]['name']}" if task["service"] in self.services else None,
            "startedBy": task["deployment"], "lastStatus": task["last"], "desiredStatus": task["desired"], "launchType": "FARGATE",
            "cpu": task["definition"].get("cpu"), "memory": task["definition"].get("memory"), "createdAt": task["created"],
            "enableExecuteCommand": bool(self.services.get(task["service"], {}).get("exec")),
            "stoppingAt": task["stopping"],
            "containers": [container],
            "attachments": [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, task["eni"])), "type": "ElasticNetworkInterface", "status": "ATTACHED",
                             "details": [{"name": "subnetId", "value": task["subnet"]}, {"name": "networkInterfaceId", "value": task["eni"]},
                                         {"name": "privateIPv4Address", "value": task["ip"]}]}],
        }
        if task["started"]:
            doc["startedAt"] = task["started"]
        if task["desired"] == "STOPPED":
            doc["stoppedReason"] = task["reason"]
            doc["stopCode"] = task["stop_code"]
        if task["stopped"]:
            doc["stoppedAt"] = task["stopped"]
        return {k: v for k, v in doc.items() if v is not None}

    def list_tasks(self, body):
        cluster = body.get("cluster", "default")
        service = body.get("serviceName")
        desired = body.get("desiredStatus", "RUNNING")
        with self.lock:
            arns = [
                t["arn"] for t in self.tasks.values()
                if self.same_cluster(t["cluster"], cluster) and t["desired"] == desired
                and (service is None or self.services.get(t["service"], {}).get("name") == service or t["service"] == service)
            ]
        return Answer(200, json.dumps({"taskArns": arns}).encode(), "application/x-amz-json-1.1")

    def describe_tasks(self, body):
        wanted = body.get("tasks", [])
        with self.lock:
            found, failures = [], []
            for ident in wanted:
                task = self.tasks.get(ident) or next((t for t in self.tasks.values() if t["id"] == ident), None)
                if task:
                    found.append(self.task_json(task))
                else:
                    failures.append({"arn": ident, "reason": "MISSING"})
        return Answer(200, json.dumps({"tasks": found, "failures": failures}).encode(), "application/x-amz-json-1.1")

    def execute_command(self, req, body):
        with self.lock:
            task = self.tasks.get(body.get("task", "")) or next((t for t in self.tasks.values() if t["id"] == body.get("task")), None)
            service = self.services.get(task["service"]) if task else None
        if task is None:
            self.refuse(400, "InvalidParameterException", f"The specified task {body.get('task')} could not be found", "ecs-exec")
        if not (service and service.get("exec")):
            self.refuse(400, "InvalidParameterException",
                        "The execute command failed because execute command was not enabled when the task was run or the execute command agent isn't running. Wait and try the request again or run a new task with execute command enabled and try again.",
                        "ecs-exec")
        if task["last"] != "RUNNING":
            self.refuse(400, "TargetNotConnectedException",
                        "The execute command failed due to an internal error. Try again later.", "ecs-exec")
        session = {"sessionId": f"ecs-execute-command-{uuid.uuid4().hex[:17]}",
                   "streamUrl": f"wss://ssmmessages.{req.region}.amazonaws.com/v1/data-channel/ecs-execute-command-x?role=publish_subscribe",
                   "tokenValue": "harness-token"}
        answer = {"clusterArn": task["cluster"], "containerArn": f"{task['arn']}/{task['container']}", "containerName": body.get("container", task["container"]),
                  "interactive": bool(body.get("interactive")), "session": session, "taskArn": task["arn"]}
        return Answer(200, json.dumps(answer).encode(), "application/x-amz-json-1.1", rule="ecs-exec")

    def rewrite_services(self, data):
        doc = json.loads(data)
        changed = False
        for service in doc.get("services", []):
            with self.lock:
                model = self.services.get(service.get("serviceArn"))
                if not model:
                    continue
                mine = [t for t in self.tasks.values() if t["service"] == model["arn"]]
                running = sum(1 for t in mine if t["last"] == "RUNNING" and t["desired"] == "RUNNING")
                pending = sum(1 for t in mine if t["last"] in ("PROVISIONING", "PENDING") and t["desired"] == "RUNNING")
                service["runningCount"] = running
                service["pendingCount"] = pending
                if model["deleted"]:
                    stopping = any(t["last"] in ("DEACTIVATING",) for t in mine)
                    service["status"] = "DRAINING" if stopping else "INACTIVE"
                deployments = []
                for i, d in enumerate(model["deployments"][:2]):
                    if i > 0 and d["rollout"] != "IN_PROGRESS":
                        break
                    of = [t for t in mine if t["deployment"] == d["id"]]
                    deployments.append({
                        "id": d["id"], "status": "PRIMARY" if i == 0 else "ACTIVE", "taskDefinition": d["task_definition"],
                        "desiredCount": model["desired"] if i == 0 else 0,
                        "pendingCount": sum(1 for t in of if t["last"] in ("PROVISIONING", "PENDING") and t["desired"] == "RUNNING"),
                        "runningCount": sum(1 for t in of if t["last"] == "RUNNING" and t["desired"] == "RUNNING"),
                        "failedTasks": d["failed"], "createdAt": d["created"], "updatedAt": now_epoch(), "launchType": "FARGATE",
                        "rolloutState": d["rollout"], "rolloutStateReason": d["reason"],
                    })
                service["deployments"] = deployments
                service["events"] = copy.deepcopy(model["events"][:20])
                changed = True
        return json.dumps(doc).encode() if changed else data

    # =========================================================================================
    # AWS Backup: jobs, recovery points and restores (moto knows vaults only).

    def before_backup(self, req):
        path, method = req.url.path, req.method
        body = req.json or {}
        if method == "PUT" and path.rstrip("/") == "/backup-jobs":
            return self.start_backup_job(req, body)
        m = re.match(r"^/backup-jobs/([^/]+)$", path)
        if method == "GET" and m:
            return self.describe_job(self.backup_jobs, unquote(m.group(1)), "backup")
        if method == "PUT" and path.rstrip("/") == "/restore-jobs":
            return self.start_restore_job(req, body)
        m = re.match(r"^/restore-jobs/([^/]+)$", path)
        if method == "GET" and m:
            return self.describe_job(self.restore_jobs, unquote(m.group(1)), "restore")
        m = re.match(r"^/resources/(.+)/recovery-points/?$", path)
        if method == "GET" and m:
            resource = unquote(m.group(1))
            # ListRecoveryPointsByResource names the size BackupSizeBytes (by vault: BackupSizeInBytes).
            return self.list_points(lambda p: p["ResourceArn"] == resource and p["account"] == self.account_of(req.who), "BackupSizeBytes")
        m = re.match(r"^/backup-vaults/([^/]+)/recovery-points/?$", path)
        if method == "GET" and m:
            vault = unquote(m.group(1))
            return self.list_points(lambda p: p["BackupVaultName"] == vault and p["account"] == self.account_of(req.who))
        m = re.match(r"^/backup-vaults/([^/]+)/recovery-points/(.+?)(/restore-metadata)?$", path)
        if m:
            point = self.recovery_points.get(unquote(m.group(2)))
            if point is None:
                self.refuse(404, "ResourceNotFoundException", f"Recovery point {unquote(m.group(2))} not found", "backup-job")
            if method == "DELETE":
                with self.lock:
                    self.recovery_points.pop(point["RecoveryPointArn"], None)
                return Answer(200, b"{}")
            if m.group(3):
                meta = {"file-system-id": point["ResourceArn"].rsplit("/", 1)[-1], "Encrypted": "true", "PerformanceMode": "generalPurpose"}
                return Answer(200, json.dumps({"BackupVaultArn": point["BackupVaultArn"], "RecoveryPointArn": point["RecoveryPointArn"], "RestoreMetadata": meta}).encode())
            return Answer(200, json.dumps(self.point_json(point)).encode())
        m = re.match(r"^/backup-vaults/([^/]+)/?$", path)
        if method == "DELETE" and m:
            vault = unquote(m.group(1))
            count = sum(1 for p in self.recovery_points.values() if p["BackupVaultName"] == vault and p["account"] == self.account_of(req.who))
            if count:
                self.refuse(400, "InvalidRequestException", f"Backup vault cannot be deleted (contains {count} recovery points)", "backup-vault-not-empty")
        return None

    def after_backup(self, req, data):
        """A vault's description counts the recovery points the model holds in it."""
        m = re.match(r"^/backup-vaults/([^/]+)/?$", req.url.path)
        if req.method == "GET" and m:
            doc = json.loads(data)
            vault = unquote(m.group(1))
            account = self.account_of(req.who)
            with self.lock:
                doc["NumberOfRecoveryPoints"] = sum(1 for p in self.recovery_points.values() if p["BackupVaultName"] == vault and p["account"] == account)
            return json.dumps(doc).encode()
        return data

    def point_json(self, point):
        return {k: v for k, v in point.items() if k not in ("account", "snapshot")}

    def list_points(self, match, size_field="BackupSizeInBytes"):
        with self.lock:
            points = [self.point_json(p) for p in self.recovery_points.values() if match(p)]
        for point in points:
            point[size_field] = point.pop("BackupSizeInBytes")
        return Answer(200, json.dumps({"RecoveryPoints": points}).encode())

    def describe_job(self, jobs, ident, kind):
        with self.lock:
            job = jobs.get(ident)
        if job is None:
            self.refuse(404, "ResourceNotFoundException", f"{kind} job {ident} not found", f"{kind}-job")
        job = dict(job)
        started = job.pop("_started")
        length = job.pop("_length")
        done = job.pop("_done", None)
        elapsed = time.monotonic() - started
        if done is not None:
            job["PercentDone"] = "100.0"
        else:
            job["PercentDone"] = f"{min(99.0, 100.0 * elapsed / max(length, 1e-6)):.1f}"
        return Answer(200, json.dumps(job).encode())

    def start_backup_job(self, req, body):
        token = body.get("IdempotencyToken")
        with self.lock:
            if token and ("backup", token) in self.tokens:
                job = self.backup_jobs[self.tokens[("backup", token)]]
                return Answer(200, json.dumps({"BackupJobId": job["BackupJobId"], "RecoveryPointArn": job["RecoveryPointArn"], "CreationDate": job["CreationDate"]}).encode())
        vault = body.get("BackupVaultName")
        backup = self.client("backup", req.who)
        try:
            vault_arn = backup.describe_backup_vault(BackupVaultName=vault)["BackupVaultArn"]
        except Exception:
            self.refuse(400, "ResourceNotFoundException", f"Backup vault {vault} does not exist", "backup-job")
        resource = body.get("ResourceArn", "")
        fs = resource.rsplit("/", 1)[-1]
        if not self.client("efs", req.who).describe_file_systems(FileSystemId=fs)["FileSystems"]:
            self.refuse(400, "InvalidParameterValueException", f"Invalid resource ARN {resource}", "backup-job")
        account = vault_arn.split(":")[4]
        job_id = str(uuid.uuid4()).upper()
        point_arn = f"arn:aws:backup:{req.region}:{account}:recovery-point:{str(uuid.uuid4()).upper()}"
        created = now_epoch()
        length = self.duration("backup-job")
        job = {
            "BackupJobId": job_id, "BackupVaultName": vault, "BackupVaultArn": vault_arn, "ResourceArn": resource, "ResourceType": "EFS",
            "IamRoleArn": body.get("IamRoleArn"), "State": "CREATED", "CreationDate": created, "RecoveryPointArn": point_arn,
            "_started": time.monotonic(), "_length": length,
        }
        with self.lock:
            self.backup_jobs[job_id] = job
            if token:
                self.tokens[("backup", token)] = job_id
        snapshot_dir = os.path.join(self.efs_root, ".recovery-points", point_arn.rsplit(":", 1)[-1])

        def running():
            with self.lock:
                job["State"] = "RUNNING"

        def completed():
            source = self.efs_dir(fs)
            shutil.copytree(source, snapshot_dir, dirs_exist_ok=True, symlinks=True)
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(snapshot_dir) for f in files) + 6144
            with self.lock:
                job.update({"State": "COMPLETED", "CompletionDate": now_epoch(), "BackupSizeInBytes": size, "_done": True})
                self.recovery_points[point_arn] = {
                    "RecoveryPointArn": point_arn, "BackupVaultName": vault, "BackupVaultArn": vault_arn, "ResourceArn": resource,
                    "ResourceType": "EFS", "CreationDate": created, "CompletionDate": now_epoch(), "Status": "COMPLETED",
                    "BackupSizeInBytes": size, "IamRoleArn": body.get("IamRoleArn"), "account": account, "snapshot": snapshot_dir,
                }

        self.at(length * 0.1, f"backup job {job_id} running", running)
        self.at(length, f"backup job {job_id} completed", completed)
        return Answer(200, json.dumps({"BackupJobId": job_id, "RecoveryPointArn": point_arn, "CreationDate": created}).encode(), rule="backup-job")

    def start_restore_job(self, req, body):
        token = body.get("IdempotencyToken")
        with self.lock:
            if token and ("restore", token) in self.tokens:
                return Answer(200, json.dumps({"RestoreJobId": self.tokens[("restore", token)]}).encode())
            point = self.recovery_points.get(body.get("RecoveryPointArn"))
        if point is None:
            self.refuse(400, "ResourceNotFoundException", f"Recovery point {body.get('RecoveryPointArn')} not found", "restore-job")
        metadata = body.get("Metadata") or {}
        if metadata.get("newFileSystem") != "true":
            self.refuse(400, "InvalidParameterValueException", "the harness models restores into a new file system only", "restore-job")
        job_id = str(uuid.uuid4()).upper()
        length = self.duration("restore-job")
        job = {
            "RestoreJobId": job_id, "RecoveryPointArn": point["RecoveryPointArn"], "Status": "PENDING", "CreationDate": now_epoch(),
            "IamRoleArn": body.get("IamRoleArn"), "ResourceType": "EFS", "_started": time.monotonic(), "_length": length,
        }
        with self.lock:
            self.restore_jobs[job_id] = job
            if token:
                self.tokens[("restore", token)] = job_id
        who = req.who

        def running():
            with self.lock:
                job["Status"] = "RUNNING"

        def completed():
            efs = self.client("efs", who)
            created = efs.create_file_system(
                CreationToken=metadata.get("CreationToken") or job_id, Encrypted=metadata.get("Encrypted") == "true",
                PerformanceMode=metadata.get("PerformanceMode", "generalPurpose"),
            )
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S-%fZ")
            target = os.path.join(self.efs_dir(created["FileSystemId"]), f"aws-backup-restore_{stamp}")
            shutil.copytree(point["snapshot"], target, dirs_exist_ok=True, symlinks=True)
            with self.lock:
                job.update({"Status": "COMPLETED", "CompletionDate": now_epoch(), "CreatedResourceArn": created["FileSystemArn"], "_done": True,
                            "BackupSizeInBytes": point["BackupSizeInBytes"]})

        self.at(length * 0.1, f"restore job {job_id} running", running)
        self.at(length, f"restore job {job_id} completed", completed)
        return Answer(200, json.dumps({"RestoreJobId": job_id}).encode(), rule="restore-job")
