"""The strict model's own tests: each rule of strict.RULES fires when AWS would, and does not
when AWS would not, driven through the harness's proxy (emulator.start: moto and the proxy in
this process) with boto3, the way the product meets it. Plus the registry: every rule's
handled_by names a function that exists in the product.

    cd /work/main && .venv/bin/python -m unittest tests/harness/test_strict.py

stdlib unittest, moto and boto3 (the harness's venv). Timed rules are checked with their knobs:
a duration set far beyond the test shows the state holding, a duration of 0 shows it over, so
nothing depends on how fast this machine is. Where a whole ECS flow would be needed for one
phase, the test moves the model's clock for that task (`nudge`) instead of waiting.
"""

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unittest
import uuid
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import emulator  # noqa: E402  (sets moto's environment before moto is imported)
import strict  # noqa: E402
from strict import PENDING, RULES  # noqa: E402

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

# AWS's hour is 0.72 s here; every duration a test waits out is set by a knob.
SCALE = 0.0002
# A duration no test outlives (AWS seconds).
FOREVER = 10**9
REGION = "us-east-1"
ACCOUNT = "123456789012"
WHO = ("testing", REGION, None)

H = None
WORK = None
CONTROL = None
CAPTURE = None
CLIENTS = {}

# Which rules the tests below exercise (filled by @covers), against RULES.
COVERED = set()


def covers(*rules):
    for rule in rules:
        assert rule in RULES, rule
    COVERED.update(rules)
    return lambda test: test


def setUpModule():
    global H, WORK, CONTROL, CAPTURE
    WORK = tempfile.mkdtemp(prefix="strict-model-test-")
    CONTROL = os.path.join(WORK, "control.json")
    CAPTURE = os.path.join(WORK, "capture.jsonl")
    H = emulator.start(CAPTURE, control=CONTROL, efs_root=os.path.join(WORK, "efs"), scale=SCALE)


def tearDownModule():
    H.close()
    shutil.rmtree(WORK, ignore_errors=True)


def client(service, key="testing", secret="testing", token=None):
    cache = (service, key, token)
    if cache not in CLIENTS:
        CLIENTS[cache] = boto3.client(
            service, endpoint_url=H.endpoint, region_name=REGION, aws_access_key_id=key, aws_secret_access_key=secret,
            aws_session_token=token, config=Config(retries={"total_max_attempts": 1}),
        )
    return CLIENTS[cache]


class FreshRetrying:
    """An EC2 client that retries the model's read-after-create refusals (a call naming ids just
    created is refused NotFound once per id), as the product's `fresh` does."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            for attempt in range(6):
                try:
                    return method(*args, **kwargs)
                except ClientError as e:
                    code = e.response["Error"]["Code"]
                    if attempt == 5 or not (code.endswith(".NotFound") or code == "NatGatewayNotFound"):
                        raise

        return call


def code_of(fn, *args, **kwargs):
    """The AWS error code the call answers (None when it succeeds)."""
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def error_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]
    raise AssertionError(f"{getattr(fn, '__name__', fn)} succeeded")


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class ModelTest(unittest.TestCase):
    def setUp(self):
        self.knobs()
        with open(CAPTURE) as f:
            self.mark = sum(1 for _ in f)
        self.ec2 = FreshRetrying(client("ec2"))

    def knobs(self, **values):
        """Sets the model's knobs (replacing all); AWS seconds for durations."""
        with open(CONTROL + ".tmp", "w") as f:
            json.dump(values, f)
        os.replace(CONTROL + ".tmp", CONTROL)

    def entries(self):
        pending = list(H.strict.fired)  # before the capture: an event moves from here to there
        with open(CAPTURE) as f:
            lines = f.readlines()[self.mark:]
        captured = [json.loads(line) for line in lines if line.strip()]
        return captured + [{"service": "model", "rule": rule, "detail": str(detail)} for rule, detail in pending]

    def fired(self, rule):
        """How often `rule` refused, answered or acted since the test began."""
        return sum(1 for e in self.entries() if e.get("rule") == rule)

    def until(self, what, fn, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what} (last: {value!r})")
            time.sleep(0.01)

    # -- network fixtures ---------------------------------------------------------------------

    def vpc(self, dns=True):
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        if dns:
            self.ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
            self.ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        return vpc

    def subnet(self, vpc, cidr="10.0.1.0/24", zone="us-east-1a"):
        return self.ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]

    def group(self, vpc, group_name=None):
        return self.ec2.create_security_group(GroupName=group_name or name("g"), Description="test", VpcId=vpc)["GroupId"]

    def interface(self, subnet, groups=()):
        return self.ec2.create_network_interface(SubnetId=subnet, Groups=list(groups))["NetworkInterface"]["NetworkInterfaceId"]

    def interfaces_in(self, subnet):
        return self.ec2.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [subnet]}])["NetworkInterfaces"]


# =============================================================================================
# EC2: windows after a create, dependencies on delete


class Ec2Rules(ModelTest):
    @covers("ec2-read-after-create")
    def test_a_new_id_is_not_found_once_then_found(self):
        raw = client("ec2")
        vpc = raw.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        self.assertEqual(code_of(raw.describe_vpcs, VpcIds=[vpc]), "InvalidVpcID.NotFound")
        self.assertEqual(self.fired("ec2-read-after-create"), 1)
        self.assertEqual(raw.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["VpcId"], vpc)
        self.assertEqual(self.fired("ec2-read-after-create"), 1, "refused once only")
        # An id that was not just created is never refused.
        default = raw.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        self.assertIsNone(code_of(raw.describe_vpcs, VpcIds=[default]))
        self.assertEqual(self.fired("ec2-read-after-create"), 1)

    @covers("security-group-name")
    def test_group_names_like_ids_are_refused(self):
        vpc = self.vpc(dns=False)
        self.assertEqual(code_of(self.ec2.create_security_group, GroupName="sg-web", Description="x", VpcId=vpc), "InvalidParameterValue")
        self.assertEqual(self.fired("security-group-name"), 1)
        self.group(vpc, "web-sg")
        self.assertEqual(self.fired("security-group-name"), 1)

    @covers("security-group-in-use")
    def test_a_group_goes_once_no_interface_or_group_uses_it(self):
        vpc = self.vpc(dns=False)
        subnet = self.subnet(vpc)
        used, referenced, referencing = self.group(vpc), self.group(vpc), self.group(vpc)
        eni = self.interface(subnet, [used])
        self.ec2.authorize_security_group_ingress(GroupId=referencing, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "UserIdGroupPairs": [{"GroupId": referenced}]}])
        self.assertEqual(code_of(self.ec2.delete_security_group, GroupId=used), "DependencyViolation")
        self.assertEqual(code_of(self.ec2.delete_security_group, GroupId=referenced), "DependencyViolation")
        self.assertEqual(self.fired("security-group-in-use"), 2)
        self.ec2.delete_network_interface(NetworkInterfaceId=eni)
        self.ec2.delete_security_group(GroupId=referencing)
        self.ec2.delete_security_group(GroupId=used)
        self.ec2.delete_security_group(GroupId=referenced)
        self.assertEqual(self.fired("security-group-in-use"), 2)

    @covers("subnet-in-use", "vpc-not-empty")
    def test_a_subnet_and_its_vpc_go_once_empty(self):
        vpc = self.vpc(dns=False)
        subnet = self.subnet(vpc)
        eni = self.interface(subnet)
        self.assertEqual(code_of(self.ec2.delete_subnet, SubnetId=subnet), "DependencyViolation")
        self.assertEqual(code_of(self.ec2.delete_vpc, VpcId=vpc), "DependencyViolation")
        self.assertEqual((self.fired("subnet-in-use"), self.fired("vpc-not-empty")), (1, 1))
        self.ec2.delete_network_interface(NetworkInterfaceId=eni)
        self.ec2.delete_subnet(SubnetId=subnet)
        self.ec2.delete_vpc(VpcId=vpc)
        self.assertEqual((self.fired("subnet-in-use"), self.fired("vpc-not-empty")), (1, 1))

    @covers("gateway-mapped-addresses", "gateway-attached", "address-in-use")
    def test_a_gateway_detaches_once_no_address_is_mapped_and_goes_once_detached(self):
        vpc = self.vpc(dns=False)
        subnet = self.subnet(vpc)
        igw = self.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        self.ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
        eni = self.interface(subnet)
        allocation = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
        association = self.ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=eni)["AssociationId"]
        self.assertEqual(code_of(self.ec2.detach_internet_gateway, InternetGatewayId=igw, VpcId=vpc), "DependencyViolation")
        self.assertEqual(code_of(self.ec2.delete_internet_gateway, InternetGatewayId=igw), "DependencyViolation")
        self.assertEqual(code_of(self.ec2.release_address, AllocationId=allocation), "InvalidIPAddress.InUse")
        self.assertEqual([self.fired(r) for r in ("gateway-mapped-addresses", "gateway-attached", "address-in-use")], [1, 1, 1])
        self.ec2.disassociate_address(AssociationId=association)
        self.ec2.release_address(AllocationId=allocation)
        self.ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
        self.ec2.delete_internet_gateway(InternetGatewayId=igw)
        self.assertEqual([self.fired(r) for r in ("gateway-mapped-addresses", "gateway-attached", "address-in-use")], [1, 1, 1])

    @covers("route-table-associated")
    def test_a_route_table_goes_once_disassociated(self):
        vpc = self.vpc(dns=False)
        subnet = self.subnet(vpc)
        table = self.ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        association = self.ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)["AssociationId"]
        self.assertEqual(code_of(self.ec2.delete_route_table, RouteTableId=table), "DependencyViolation")
        self.ec2.disassociate_route_table(AssociationId=association)
        self.ec2.delete_route_table(RouteTableId=table)
        self.assertEqual(self.fired("route-table-associated"), 1)

    @covers("instance-type-not-offered", "instance-pending", "instance-shutting-down")
    def test_instances_start_pending_only_where_offered_and_shut_down_slowly(self):
        vpc = self.vpc(dns=False)
        offered, unoffered = self.subnet(vpc, "10.0.1.0/24", "us-east-1a"), self.subnet(vpc, "10.0.2.0/24", "us-east-1e")
        image = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        run = lambda subnet: self.ec2.run_instances(ImageId=image, InstanceType="t4g.nano", MinCount=1, MaxCount=1, SubnetId=subnet)  # noqa: E731
        error = error_of(run, unoffered)
        self.assertEqual(error["Code"], "Unsupported")
        self.assertIn("(t4g.nano) is not supported in your requested Availability Zone (us-east-1e)", error["Message"])
        self.assertEqual(self.fired("instance-type-not-offered"), 1)

        def state(instance):
            return self.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]

        self.knobs(instance_pending=FOREVER, instance_shutting_down=FOREVER)
        slow = run(offered)["Instances"][0]["InstanceId"]
        self.assertEqual(self.fired("instance-type-not-offered"), 1)
        self.assertEqual(state(slow), "pending")
        self.ec2.terminate_instances(InstanceIds=[slow])
        self.assertEqual(state(slow), "shutting-down")
        self.knobs(instance_pending=0, instance_shutting_down=0)
        self.assertEqual(state(slow), "shutting-down", "its end was set when it was terminated")
        quick = run(offered)["Instances"][0]["InstanceId"]
        self.assertEqual(state(quick), "running")
        self.ec2.terminate_instances(InstanceIds=[quick])
        self.until("the instance terminated", lambda: state(quick) == "terminated")

    @covers("nat-gateway-pending", "nat-gateway-deleting")
    def test_a_nat_gateway_is_pending_then_deletes_over_time_keeping_its_address(self):
        vpc = self.vpc(dns=False)
        subnet = self.subnet(vpc)

        def gateway(ident):
            return self.ec2.describe_nat_gateways(NatGatewayIds=[ident])["NatGateways"][0]

        def create():
            allocation = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
            return self.ec2.create_nat_gateway(SubnetId=subnet, AllocationId=allocation)["NatGateway"]["NatGatewayId"], allocation

        self.knobs(nat_gateway_pending=FOREVER, nat_gateway_deleting=FOREVER)
        slow, slow_address = create()
        self.assertEqual(gateway(slow)["State"], "pending")
        self.ec2.delete_nat_gateway(NatGatewayId=slow)
        self.assertEqual(gateway(slow)["State"], "deleting")
        self.assertEqual(self.fired("nat-gateway-deleting"), 1)
        self.assertEqual(code_of(self.ec2.release_address, AllocationId=slow_address), "InvalidIPAddress.InUse")
        self.knobs(nat_gateway_pending=0, nat_gateway_deleting=0)
        quick, quick_address = create()
        self.assertEqual(gateway(quick)["State"], "available")
        self.ec2.delete_nat_gateway(NatGatewayId=quick)
        self.until("the NAT gateway deleted", lambda: gateway(quick)["State"] == "deleted")
        self.until("its address released", lambda: code_of(self.ec2.release_address, AllocationId=quick_address) is None)


# =============================================================================================
# Load balancers and certificates


class LoadBalancerRules(ModelTest):
    def network(self):
        vpc = self.vpc(dns=False)
        subnets = [self.subnet(vpc, "10.0.1.0/24", "us-east-1a"), self.subnet(vpc, "10.0.2.0/24", "us-east-1b")]
        return vpc, subnets, self.group(vpc)

    @covers("load-balancer-provisioning", "load-balancer-interfaces-linger")
    def test_a_load_balancer_provisions_and_its_interfaces_hold_the_subnets_after_it_is_gone(self):
        elb = client("elbv2")
        self.knobs(load_balancer_provisioning=FOREVER, load_balancer_interfaces_linger=FOREVER)
        _, subnets, group = self.network()
        lb = elb.create_load_balancer(Name=name("lb"), Subnets=subnets, SecurityGroups=[group])["LoadBalancers"][0]["LoadBalancerArn"]
        state = lambda arn: elb.describe_load_balancers(LoadBalancerArns=[arn])["LoadBalancers"][0]["State"]["Code"]  # noqa: E731
        self.assertEqual(state(lb), "provisioning")
        enis = self.interfaces_in(subnets[0])
        self.assertTrue(enis and enis[0]["Description"].startswith("ELB app/"), enis)
        self.assertTrue(enis[0].get("Association", {}).get("PublicIp"), "a public load balancer's interface maps an address")
        elb.delete_load_balancer(LoadBalancerArn=lb)
        self.assertEqual(code_of(self.ec2.delete_subnet, SubnetId=subnets[0]), "DependencyViolation")
        self.assertEqual(code_of(self.ec2.delete_security_group, GroupId=group), "DependencyViolation")

        # Released: the same deletes go through.
        self.knobs(load_balancer_provisioning=0, load_balancer_interfaces_linger=0)
        _, subnets, group = self.network()
        lb = elb.create_load_balancer(Name=name("lb"), Subnets=subnets, SecurityGroups=[group])["LoadBalancers"][0]["LoadBalancerArn"]
        self.assertEqual(state(lb), "active")
        elb.delete_load_balancer(LoadBalancerArn=lb)
        self.until("the interfaces released", lambda: not self.interfaces_in(subnets[0]))
        self.ec2.delete_subnet(SubnetId=subnets[0])
        self.ec2.delete_security_group(GroupId=group)
        self.assertGreaterEqual(self.fired("interface-released"), 2)

    @covers("certificate-validation")
    def test_a_certificate_is_issued_after_validation(self):
        acm = client("acm")
        arn = acm.request_certificate(DomainName=f"{name('git')}.example.com", ValidationMethod="DNS")["CertificateArn"]
        status = lambda: acm.describe_certificate(CertificateArn=arn)["Certificate"]["Status"]  # noqa: E731
        self.assertEqual(status(), "PENDING_VALIDATION")
        # moto's own knob, set from the rule: whole seconds, at least one.
        self.until("the certificate issued", lambda: status() == "ISSUED", timeout=5)

    @covers("listener-certificate-not-found", "certificate-in-use-after-listener")
    def test_a_new_certificate_is_not_found_once_and_stays_in_use_after_its_listener(self):
        acm, elb = client("acm"), client("elbv2")
        vpc, subnets, group = self.network()
        lb = elb.create_load_balancer(Name=name("lb"), Subnets=subnets, SecurityGroups=[group])["LoadBalancers"][0]["LoadBalancerArn"]
        tg = elb.create_target_group(Name=name("tg"), Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]

        def listener(cert, port):
            return elb.create_listener(LoadBalancerArn=lb, Protocol="HTTPS", Port=port, Certificates=[{"CertificateArn": cert}],
                                       DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]["ListenerArn"]

        certs = [acm.request_certificate(DomainName=f"{name('git')}.example.com")["CertificateArn"] for _ in range(2)]
        self.assertEqual(code_of(listener, certs[0], 443), "CertificateNotFound")
        held = listener(certs[0], 443)
        self.assertEqual(self.fired("listener-certificate-not-found"), 1)
        self.assertEqual(code_of(acm.delete_certificate, CertificateArn=certs[0]), "ResourceInUseException")
        self.knobs(certificate_in_use_after_listener=FOREVER)
        elb.delete_listener(ListenerArn=held)
        self.assertEqual(code_of(acm.delete_certificate, CertificateArn=certs[0]), "ResourceInUseException")
        self.assertEqual(self.fired("certificate-in-use-after-listener"), 2)

        self.knobs(certificate_in_use_after_listener=0)
        code_of(listener, certs[1], 8443)
        released = listener(certs[1], 8443)
        elb.delete_listener(ListenerArn=released)
        acm.delete_certificate(CertificateArn=certs[1])
        self.assertEqual(self.fired("certificate-in-use-after-listener"), 2)

    @covers("listener-idle-timeout-range")
    def test_an_nlb_listener_idle_timeout_is_60_to_6000(self):
        elb = client("elbv2")
        vpc, subnets, _ = self.network()
        lb = elb.create_load_balancer(Name=name("nlb"), Subnets=subnets[:1], Type="network")["LoadBalancers"][0]["LoadBalancerArn"]
        tg = elb.create_target_group(Name=name("tg"), Protocol="TCP", Port=22, VpcId=vpc, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        listener = elb.create_listener(LoadBalancerArn=lb, Protocol="TCP", Port=22,
                                       DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]["ListenerArn"]

        def idle():
            attributes = elb.describe_listener_attributes(ListenerArn=listener)["Attributes"]
            return {a["Key"]: a["Value"] for a in attributes}["tcp.idle_timeout.seconds"]

        def modify(value):
            return elb.modify_listener_attributes(ListenerArn=listener, Attributes=[{"Key": "tcp.idle_timeout.seconds", "Value": value}])

        self.assertEqual(idle(), "350")
        for value in ("59", "6001", "ten"):
            self.assertEqual(code_of(modify, value), "ValidationError", value)
        self.assertEqual(self.fired("listener-idle-timeout-range"), 3)
        self.assertEqual(idle(), "350")
        for value in ("60", "6000", "1200"):
            modify(value)
        self.assertEqual(idle(), "1200")
        self.assertEqual(self.fired("listener-idle-timeout-range"), 3)


    @covers("access-log-bucket-permission")
    def test_access_logs_are_turned_on_only_into_a_bucket_that_lets_elb_write(self):
        elb, s3 = client("elbv2"), client("s3")
        _, subnets, group = self.network()
        lb = elb.create_load_balancer(Name=name("lb"), Subnets=subnets, SecurityGroups=[group])["LoadBalancers"][0]["LoadBalancerArn"]
        bucket = name("logs")
        logs_on = lambda: elb.modify_load_balancer_attributes(LoadBalancerArn=lb, Attributes=[  # noqa: E731
            {"Key": "access_logs.s3.enabled", "Value": "true"}, {"Key": "access_logs.s3.bucket", "Value": bucket},
            {"Key": "access_logs.s3.prefix", "Value": "lb"}])
        self.assertEqual(code_of(logs_on), "InvalidConfigurationRequest", "no such bucket")
        s3.create_bucket(Bucket=bucket)
        elsewhere = {"Effect": "Allow", "Principal": {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}, "Action": "s3:PutObject",
                     "Resource": f"arn:aws:s3:::{bucket}/other/AWSLogs/{ACCOUNT}/*"}
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [elsewhere]}))
        self.assertEqual(code_of(logs_on), "InvalidConfigurationRequest", "the policy covers another prefix")
        under = dict(elsewhere, Resource=f"arn:aws:s3:::{bucket}/lb/AWSLogs/{ACCOUNT}/*")
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [under]}))
        logs_on()
        self.assertEqual(self.fired("access-log-bucket-permission"), 3)

    @covers("web-acl-associated", "web-acl-provisioning-load-balancer")
    def test_a_web_acl_in_front_of_a_load_balancer_is_not_deleted(self):
        elb, waf = client("elbv2"), client("wafv2")
        _, subnets, group = self.network()
        self.knobs(load_balancer_provisioning=FOREVER)
        lb = elb.create_load_balancer(Name=name("lb"), Subnets=subnets, SecurityGroups=[group])["LoadBalancers"][0]["LoadBalancerArn"]
        visibility = {"SampledRequestsEnabled": True, "CloudWatchMetricsEnabled": True, "MetricName": "m"}
        acl = waf.create_web_acl(Name=name("acl"), Scope="REGIONAL", DefaultAction={"Allow": {}}, Rules=[], VisibilityConfig=visibility)["Summary"]
        # Not while the load balancer provisions; once it is active.
        associate = lambda: waf.associate_web_acl(WebACLArn=acl["ARN"], ResourceArn=lb)  # noqa: E731
        self.assertEqual(code_of(associate), "WAFUnavailableEntityException")
        self.assertEqual(self.fired("web-acl-provisioning-load-balancer"), 1)
        self.knobs()
        state = lambda: elb.describe_load_balancers(LoadBalancerArns=[lb])["LoadBalancers"][0]["State"]["Code"]  # noqa: E731
        self.until("the load balancer active", lambda: state() == "active")
        associate()
        delete = lambda: waf.delete_web_acl(Name=acl["Name"], Scope="REGIONAL", Id=acl["Id"], LockToken=acl["LockToken"])  # noqa: E731
        self.assertEqual(code_of(delete), "WAFAssociatedItemException")
        waf.disassociate_web_acl(ResourceArn=lb)
        delete()
        self.assertEqual(self.fired("web-acl-associated"), 1)

    @covers("network-acl-entry-not-found")
    def test_deleting_a_network_acl_rule_twice_says_not_found(self):
        ec2 = client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.61.0.0/16")["Vpc"]["VpcId"]
        def default_acl():
            try:  # a new VPC is not found for a moment (the model's EC2 read-after-create)
                return ec2.describe_network_acls(Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "default", "Values": ["true"]}])["NetworkAcls"][0]
            except ClientError:
                return None
        acl = self.until("the default network ACL", default_acl)
        delete = lambda: ec2.delete_network_acl_entry(NetworkAclId=acl["NetworkAclId"], RuleNumber=100, Egress=False)  # noqa: E731
        delete()
        self.assertEqual(code_of(delete), "InvalidNetworkAclEntry.NotFound")
        self.assertEqual(self.fired("network-acl-entry-not-found"), 1)

    @covers("load-balancer-deletion-protection")
    def test_a_protected_load_balancer_is_not_deleted_until_its_protection_is_lifted(self):
        elb = client("elbv2")
        _, subnets, group = self.network()
        lb = elb.create_load_balancer(Name=name("lb"), Subnets=subnets, SecurityGroups=[group])["LoadBalancers"][0]["LoadBalancerArn"]
        protect = lambda on: elb.modify_load_balancer_attributes(  # noqa: E731
            LoadBalancerArn=lb, Attributes=[{"Key": "deletion_protection.enabled", "Value": on}])
        protect("true")
        self.assertEqual(code_of(elb.delete_load_balancer, LoadBalancerArn=lb), "OperationNotPermitted")
        self.assertEqual(len(elb.describe_load_balancers(LoadBalancerArns=[lb])["LoadBalancers"]), 1)
        protect("false")
        elb.delete_load_balancer(LoadBalancerArn=lb)
        self.assertEqual(code_of(elb.describe_load_balancers, LoadBalancerArns=[lb]), "LoadBalancerNotFound")
        self.assertEqual(self.fired("load-balancer-deletion-protection"), 1)


# =============================================================================================
# Secrets Manager, IAM and Lambda


def function_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    return buffer.getvalue()


class LambdaAndSecretRules(ModelTest):
    @covers("secret-name-reserved")
    def test_a_force_deleted_secret_name_is_reserved_for_a_while(self):
        sm = client("secretsmanager")
        reserved, free = name("root"), name("other")
        sm.create_secret(Name=reserved, SecretString="x")
        sm.delete_secret(SecretId=reserved, ForceDeleteWithoutRecovery=True)
        self.knobs(secret_name_reserved=FOREVER)
        self.assertEqual(code_of(sm.create_secret, Name=reserved, SecretString="y"), "InvalidRequestException")
        self.assertEqual(code_of(sm.create_secret, Name=reserved, SecretString="y"), "InvalidRequestException")
        self.assertEqual(self.fired("secret-name-reserved"), 2)
        sm.create_secret(Name=free, SecretString="x")
        self.assertEqual(self.fired("secret-name-reserved"), 2)
        # After a refusal the name frees at the rule's time.
        again = name("root")
        sm.create_secret(Name=again, SecretString="x")
        sm.delete_secret(SecretId=again, ForceDeleteWithoutRecovery=True)
        self.knobs(secret_name_reserved=0)
        self.assertEqual(code_of(sm.create_secret, Name=again, SecretString="y"), "InvalidRequestException")
        sm.create_secret(Name=again, SecretString="y")

    def role(self, vpc_access=True):
        iam = client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        role = iam.create_role(RoleName=name("fn-role"), AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        if vpc_access:
            iam.attach_role_policy(RoleName=role["RoleName"], PolicyArn="arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole")
        return role["Arn"]

    def create_function(self, function, role, subnet=None, group=None):
        config = {"SubnetIds": [subnet], "SecurityGroupIds": [group]} if subnet else {}
        return client("lambda").create_function(FunctionName=function, Runtime="python3.12", Role=role, Handler="handler.handler",
                                                Code={"ZipFile": function_zip()}, VpcConfig=config)

    @covers("lambda-role-not-assumable", "lambda-role-no-vpc-permission", "function-pending")
    def test_a_function_on_a_new_role_waits_for_iam_then_is_pending(self):
        vpc = self.vpc(dns=False)
        subnet, group = self.subnet(vpc), self.group(vpc)
        role = self.role()
        self.knobs(function_pending=FOREVER)
        function = name("fn")
        self.assertEqual(error_of(self.create_function, function, role, subnet, group)["Message"],
                         "The role defined for the function cannot be assumed by Lambda.")
        self.assertIn("does not have permissions to call CreateNetworkInterface",
                      error_of(self.create_function, function, role, subnet, group)["Message"])
        self.create_function(function, role, subnet, group)
        self.assertEqual([self.fired("lambda-role-not-assumable"), self.fired("lambda-role-no-vpc-permission")], [1, 1])
        self.assertEqual(client("lambda").get_function(FunctionName=function)["Configuration"]["State"], "Pending")
        # Without a VPC the permission to create interfaces is not asked; once active, Active.
        self.knobs(function_pending=0)
        other, role = name("fn"), self.role(vpc_access=False)
        code_of(self.create_function, other, role)
        self.create_function(other, role)
        self.assertEqual([self.fired("lambda-role-not-assumable"), self.fired("lambda-role-no-vpc-permission")], [2, 1])
        self.assertNotEqual(client("lambda").get_function(FunctionName=other)["Configuration"].get("State"), "Pending")

    def function_in(self, subnet, group, vpc_access=True):
        function, role = name("fn"), self.role(vpc_access)
        for _ in range(3):  # the role's propagation refusals
            if code_of(self.create_function, function, role, subnet, group) is None:
                break
        return function

    @covers("lambda-interfaces-linger", "lambda-interfaces-need-the-role")
    def test_a_deleted_function_keeps_its_interface_for_a_while_and_for_good_without_its_role(self):
        vpc = self.vpc(dns=False)
        subnet, group = self.subnet(vpc), self.group(vpc)
        self.knobs(lambda_interfaces_linger=FOREVER)
        function = self.function_in(subnet, group)
        eni = self.interfaces_in(subnet)[0]
        self.assertTrue(eni["Description"].startswith("AWS Lambda VPC ENI-") and eni["InterfaceType"] == "lambda", eni)
        client("lambda").delete_function(FunctionName=function)
        self.assertEqual(code_of(self.ec2.delete_security_group, GroupId=group), "DependencyViolation")
        self.assertEqual(code_of(self.ec2.delete_subnet, SubnetId=subnet), "DependencyViolation")

        # Released with its role: the group and subnet go.
        self.knobs(lambda_interfaces_linger=0)
        subnet2, group2 = self.subnet(vpc, "10.0.2.0/24"), self.group(vpc)
        client("lambda").delete_function(FunctionName=self.function_in(subnet2, group2))
        self.until("the interface released", lambda: not self.interfaces_in(subnet2))
        self.ec2.delete_security_group(GroupId=group2)
        self.ec2.delete_subnet(SubnetId=subnet2)
        self.assertEqual(self.fired("lambda-interfaces-need-the-role"), 0)

        # A role without its VPC permissions cannot release it.
        subnet3, group3 = self.subnet(vpc, "10.0.3.0/24"), self.group(vpc)
        client("lambda").delete_function(FunctionName=self.function_in(subnet3, group3, vpc_access=False))
        self.until("the release refused", lambda: self.fired("lambda-interfaces-need-the-role") == 1)
        self.assertEqual(len(self.interfaces_in(subnet3)), 1)

    @covers("lambda-log-group")
    def test_lambda_creates_the_function_log_group_on_first_invoke(self):
        function = name("x") + "-efs-init"
        role = self.role(vpc_access=False)
        code_of(self.create_function, function, role)
        self.create_function(function, role)
        logs, lam = client("logs"), client("lambda")
        groups = lambda: logs.describe_log_groups(logGroupNamePrefix=f"/aws/lambda/{function}")["logGroups"]  # noqa: E731
        self.assertEqual(groups(), [])
        lam.invoke(FunctionName=function, Payload=json.dumps({"base": "/srv", "directories": []}))
        self.assertEqual(len(groups()), 1)
        lam.invoke(FunctionName=function, Payload=json.dumps({"base": "/srv", "directories": []}))
        self.assertEqual(self.fired("lambda-log-group"), 1)


# =============================================================================================
# EFS


class EfsRules(ModelTest):
    def file_system(self):
        return client("efs").create_file_system(CreationToken=name("tok"))["FileSystemId"]

    @covers("file-system-creating")
    def test_a_file_system_is_creating_for_a_moment(self):
        efs = client("efs")
        state = lambda fs: efs.describe_file_systems(FileSystemId=fs)["FileSystems"][0]["LifeCycleState"]  # noqa: E731
        self.knobs(file_system_creating=FOREVER)
        self.assertEqual(state(self.file_system()), "creating")
        self.knobs(file_system_creating=0)
        self.assertEqual(state(self.file_system()), "available")

    @covers("mount-target-creating", "mount-target-deleting", "mount-target-not-found")
    def test_mount_targets_create_and_delete_over_time_and_a_gone_one_is_not_found(self):
        efs = client("efs")
        vpc = self.vpc(dns=False)
        fs = self.file_system()

        def state(target):
            return efs.describe_mount_targets(MountTargetId=target)["MountTargets"][0]["LifeCycleState"]

        self.knobs(mount_target_creating=FOREVER, mount_target_deleting=FOREVER)
        subnet = self.subnet(vpc, "10.0.1.0/24")
        slow = efs.create_mount_target(FileSystemId=fs, SubnetId=subnet)["MountTargetId"]
        self.assertEqual(state(slow), "creating")
        efs.delete_mount_target(MountTargetId=slow)
        self.assertEqual(state(slow), "deleting")
        self.assertEqual(code_of(self.ec2.delete_subnet, SubnetId=subnet), "DependencyViolation", "its interface is in place")
        efs.delete_mount_target(MountTargetId=slow)  # again while deleting: accepted
        self.assertEqual(self.fired("mount-target-deleting"), 2)

        self.knobs(mount_target_creating=0, mount_target_deleting=0)
        subnet2 = self.subnet(vpc, "10.0.2.0/24", "us-east-1b")
        quick = efs.create_mount_target(FileSystemId=fs, SubnetId=subnet2)["MountTargetId"]
        self.assertEqual(state(quick), "available")
        efs.delete_mount_target(MountTargetId=quick)
        self.until("the mount target gone", lambda: code_of(efs.describe_mount_targets, MountTargetId=quick) == "MountTargetNotFound")
        self.assertEqual(self.fired("mount-target-not-found"), 0)
        error = error_of(efs.delete_mount_target, MountTargetId=quick)
        self.assertEqual((error["Code"], error["Message"]), ("MountTargetNotFound", f"Mount target '{quick}' does not exist."))
        self.assertEqual(code_of(efs.delete_mount_target, MountTargetId="fsmt-0123456789abcdef0"), "MountTargetNotFound")
        self.assertEqual(self.fired("mount-target-not-found"), 2)
        last = [e for e in self.entries() if e.get("action", "").startswith("DELETE /2015-02-01/mount-targets/")][-1]
        self.assertEqual(last["refused"], "MountTargetNotFound")
        self.ec2.delete_subnet(SubnetId=subnet2)

    @covers("update-file-system")
    def test_update_file_system_and_backup_policy_are_answered(self):
        efs = client("efs")
        fs = self.file_system()
        self.assertEqual(efs.update_file_system(FileSystemId=fs, ThroughputMode="elastic")["ThroughputMode"], "elastic")
        self.assertEqual(efs.put_backup_policy(FileSystemId=fs, BackupPolicy={"Status": "DISABLED"})["BackupPolicy"]["Status"], "DISABLED")
        self.assertEqual(code_of(efs.update_file_system, FileSystemId="fs-00000000", ThroughputMode="elastic"), "FileSystemNotFound")


# =============================================================================================
# ECS on Fargate


class EcsRules(ModelTest):
    def setUp(self):
        super().setUp()
        self.ecs, self.elb, self.logs = client("ecs"), client("elbv2"), client("logs")
        self.cluster = name("cluster")
        self.ecs.create_cluster(clusterName=self.cluster, settings=[{"name": "containerInsights", "value": "enabled"}])
        self.vpc_id = self.vpc(dns=True)
        self.subnet_id = self.subnet(self.vpc_id)
        self.group_id = self.group(self.vpc_id)
        self.log_group = f"/test/{self.cluster}"
        self.logs.create_log_group(logGroupName=self.log_group)
        self.fs = f"fs-{uuid.uuid4().hex[:17]}"
        self.addCleanup(self.stop_services)

    def definition(self, fs=None, root="/"):
        volume = {"name": "data", "efsVolumeConfiguration": {"fileSystemId": fs or self.fs, "rootDirectory": root}}
        container = {
            "name": "gitlab", "image": "gitlab/gitlab-ce:18.11.7-ce.0", "essential": True, "portMappings": [{"containerPort": 80}],
            "mountPoints": [{"sourceVolume": "data", "containerPath": "/var/opt/gitlab"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": self.log_group, "awslogs-region": REGION, "awslogs-stream-prefix": "gitlab"}},
        }
        return self.ecs.register_task_definition(family=name("gitlab"), requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
                                                 cpu="1024", memory="2048", containerDefinitions=[container], volumes=[volume])["taskDefinition"]["taskDefinitionArn"]

    def target_group(self):
        return self.elb.create_target_group(Name=name("tg"), Protocol="HTTP", Port=80, VpcId=self.vpc_id, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]

    def service(self, definition=None, target_group=None, grace=1200, exec_enabled=False, subnet=None, count=1, strategy=None):
        request = dict(cluster=self.cluster, serviceName="gitlab", taskDefinition=definition or self.definition(), desiredCount=count,
                       launchType="FARGATE", healthCheckGracePeriodSeconds=grace, enableExecuteCommand=exec_enabled,
                       networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet or self.subnet_id], "securityGroups": [self.group_id]}})
        if strategy:
            del request["launchType"]
            request["capacityProviderStrategy"] = strategy
        if target_group:
            request["loadBalancers"] = [{"targetGroupArn": target_group, "containerName": "gitlab", "containerPort": 80}]
        for attempt in range(2):  # ECS's service-linked role on the account's first service
            try:
                return self.ecs.create_service(**request)["service"]["serviceArn"]
            except ClientError as e:
                if attempt or "service linked role" not in e.response["Error"]["Message"]:
                    raise

    def stop_services(self):
        for arn in self.ecs.list_services(cluster=self.cluster).get("serviceArns", []):
            self.ecs.update_service(cluster=self.cluster, service=arn, desiredCount=0)
            self.ecs.delete_service(cluster=self.cluster, service=arn, force=True)

    def tasks(self, desired="RUNNING"):
        arns = self.ecs.list_tasks(cluster=self.cluster, desiredStatus=desired)["taskArns"]
        return self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)["tasks"] if arns else []

    def task(self, arn):
        return self.ecs.describe_tasks(cluster=self.cluster, tasks=[arn])["tasks"][0]

    def first_task(self):
        return self.until("a task", lambda: (self.tasks() or [None])[0])["taskArn"]

    def status_becomes(self, arn, status):
        return self.until(f"task {status}", lambda: self.task(arn)["lastStatus"] == status and self.task(arn))

    def nudge(self, arn, **fields):
        """Moves the model's clock for one task: its current phase is over now."""
        with H.strict.lock:
            H.strict.tasks[arn].update({"next": 0, **fields})

    def health(self, tg):
        return [d["TargetHealth"]["State"] for d in self.elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]]

    def stream_text(self):
        streams = self.logs.describe_log_streams(logGroupName=self.log_group)["logStreams"]
        return "\n".join(e["message"] for s in streams for e in self.logs.get_log_events(logGroupName=self.log_group, logStreamName=s["logStreamName"])["events"])

    @covers("ecs-service-linked-role")
    def test_the_first_service_with_a_load_balancer_in_an_account_waits_for_the_linked_role(self):
        # A new account (moto gives assumed roles the role's account): its first service.
        creds = client("sts").assume_role(RoleArn="arn:aws:iam::210987654321:role/other", RoleSessionName="test")["Credentials"]
        ecs = client("ecs", creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
        ecs.create_cluster(clusterName="other")
        definition = ecs.register_task_definition(family="x", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
                                                  containerDefinitions=[{"name": "x", "image": "x"}])["taskDefinition"]["taskDefinitionArn"]
        request = dict(cluster="other", taskDefinition=definition, desiredCount=0,
                       loadBalancers=[{"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:210987654321:targetgroup/x/1", "containerName": "x", "containerPort": 80}])
        self.assertIn("Unable to assume the service linked role", error_of(ecs.create_service, serviceName="a", **request)["Message"])
        ecs.create_service(serviceName="a", **request)
        ecs.create_service(serviceName="b", **request)
        self.assertEqual(self.fired("ecs-service-linked-role"), 1)

    @covers("task-provisioning", "image-pull", "gitlab-first-boot", "gitlab-boot", "health-check", "deregistration-delay",
            "gitlab-stop", "task-deprovisioning", "cluster-contains-tasks", "container-insights-log-group")
    def test_a_task_lives_through_every_phase_for_its_duration(self):
        # (health checks too: a boot that outlasts 10 failed checks and the grace is stopped.)
        slow = dict(task_provisioning=FOREVER, image_pull=FOREVER, gitlab_first_boot=FOREVER, gitlab_boot=FOREVER, health_check=FOREVER,
                    deregistration_delay=FOREVER, gitlab_stop=FOREVER, task_deprovisioning=FOREVER)
        self.knobs(**slow)
        tg = self.target_group()
        service = self.service(target_group=tg)
        arn = self.first_task()
        self.assertEqual(self.task(arn)["lastStatus"], "PROVISIONING")
        self.nudge(arn)
        self.status_becomes(arn, "PENDING")  # pulling the image
        self.nudge(arn)
        running = self.status_becomes(arn, "RUNNING")
        self.assertEqual(running["containers"][0]["lastStatus"], "RUNNING")
        self.assertEqual(self.health(tg), ["initial"], "GitLab is still booting")
        self.assertIn("Configuring GitLab for the first time...", self.stream_text())
        self.until("Container Insights' log group", lambda: self.fired("container-insights-log-group") == 1)
        # Booted and two health checks later: healthy, the deployment complete.
        now = time.monotonic()
        self.nudge(arn, boot_done=now, healthy_at=now, kill_at=None)
        self.until("healthy", lambda: self.health(tg) == ["healthy"])
        deployment = self.ecs.describe_services(cluster=self.cluster, services=[service])["services"][0]["deployments"][0]
        self.assertEqual(deployment["rolloutState"], "COMPLETED")
        # A cluster with a task that has not stopped cannot go.
        self.assertEqual(code_of(self.ecs.delete_cluster, cluster=self.cluster), "ClusterContainsTasksException")
        self.assertEqual(self.fired("cluster-contains-tasks"), 1)

        # A new deployment: the old task drains, stops, deprovisions, each for its time.
        self.ecs.update_service(cluster=self.cluster, service=service, forceNewDeployment=True)
        self.status_becomes(arn, "DEACTIVATING")
        self.assertEqual(self.health(tg), ["draining"])
        self.nudge(arn)
        self.status_becomes(arn, "STOPPING")
        self.nudge(arn)
        self.status_becomes(arn, "DEPROVISIONING")
        self.assertEqual(self.tasks(), [], "no new task while the old one has not stopped (minimum 0%, maximum 100%)")
        # The next boot finds its data in place: a later boot, not a first.
        self.knobs(**{**slow, "task_provisioning": 0, "image_pull": 0})
        self.nudge(arn)
        stopped = self.status_becomes(arn, "STOPPED")
        self.assertEqual((stopped["stopCode"], stopped["containers"][0]["exitCode"]), ("ServiceSchedulerInitiated", 0))
        second = self.first_task()
        self.status_becomes(second, "RUNNING")
        self.until("the later boot's log line", lambda: "Starting GitLab..." in self.stream_text())
        self.knobs()
        self.ecs.update_service(cluster=self.cluster, service=service, desiredCount=0)
        self.nudge(second)
        self.until("every task stopped", lambda: all(self.task(a)["lastStatus"] == "STOPPED" for a in (arn, second)))
        self.ecs.delete_service(cluster=self.cluster, service=service)
        self.ecs.delete_cluster(cluster=self.cluster)
        self.assertEqual(self.fired("cluster-contains-tasks"), 1)

    def new_cluster(self):
        self.cluster = name("cluster")
        self.ecs.create_cluster(clusterName=self.cluster)

    @covers("failed-health-checks")
    def test_a_task_that_boots_past_its_grace_fails_health_checks_until_the_circuit_breaker_trips(self):
        self.knobs(gitlab_first_boot=FOREVER)  # 10 failed checks (300 s) come first, with no grace
        tg = self.target_group()
        service = self.service(target_group=tg, grace=0)
        described = lambda: self.ecs.describe_services(cluster=self.cluster, services=[service])["services"][0]  # noqa: E731
        self.until("the circuit breaker", lambda: described()["deployments"][0]["rolloutState"] == "FAILED")
        self.assertEqual(self.fired("failed-health-checks"), 3)
        stopped = self.tasks("STOPPED")
        self.assertTrue(stopped and all(t["stoppedReason"].startswith("Task failed ELB health checks") for t in stopped), stopped)
        # A grace period longer than the first boot (AWS's 660 s against 1200 s): not stopped.
        self.stop_services()
        self.knobs()
        self.new_cluster()
        service = self.service(target_group=self.target_group(), grace=1200)
        self.until("the deployment complete", lambda: described()["deployments"][0]["rolloutState"] == "COMPLETED")
        self.assertEqual(self.fired("failed-health-checks"), 3)

    @covers("cannot-pull-container", "resource-initialization-error", "efs-mount-needs-dns-and-directory")
    def test_tasks_that_cannot_start_stop_with_ecs_reasons(self):
        cases = [
            ("cannot-pull-container", {"pull_error": "toomanyrequests: You have reached your unauthenticated pull rate limit."},
             "CannotPullContainerError: toomanyrequests", None),
            ("resource-initialization-error", {"init_error": "unable to pull secrets or registry auth: execution resource retrieval failed"},
             "ResourceInitializationError: unable to pull secrets", None),
            ("efs-mount-needs-dns-and-directory", {}, "ResourceInitializationError: failed to invoke EFS utils commands", "/missing"),
        ]
        for rule, knobs, reason, root in cases:
            with self.subTest(rule):
                self.knobs(**knobs)
                self.new_cluster()
                service = self.service(definition=self.definition(root=root or "/"))
                self.until("a stopped task", lambda: self.tasks("STOPPED"))
                task = self.tasks("STOPPED")[0]
                self.assertEqual(task["stopCode"], "TaskFailedToStart")
                self.assertTrue(task["stoppedReason"].startswith(reason), task["stoppedReason"])
                self.assertGreaterEqual(self.fired(rule), 1)
                events = self.ecs.describe_services(cluster=self.cluster, services=[service])["services"][0]["events"]
                self.assertTrue(any(reason in e["message"] for e in events), events)
                self.stop_services()
        # None of them without the cause: a task runs.
        self.knobs()
        self.new_cluster()
        fired = [self.fired(rule) for rule, *_ in cases]
        self.service()
        self.status_becomes(self.first_task(), "RUNNING")
        self.assertEqual([self.fired(rule) for rule, *_ in cases], fired)

    @covers("efs-mount-needs-dns-and-directory")
    def test_an_efs_volume_does_not_mount_without_vpc_dns(self):
        vpc = self.vpc(dns=False)
        subnet = self.subnet(vpc)
        self.service(subnet=subnet)
        self.until("a stopped task", lambda: self.tasks("STOPPED"))
        self.assertIn("Failed to resolve", self.tasks("STOPPED")[0]["stoppedReason"])

    @covers("service-capacity-provider-strategy", "spot-interruption")
    def test_a_spot_service_keeps_its_strategy_and_a_reclaimed_task_is_replaced(self):
        spot = [{"capacityProvider": "FARGATE_SPOT", "weight": 1, "base": 0}]
        service = self.service(strategy=spot)
        described = self.ecs.describe_services(cluster=self.cluster, services=[service])["services"][0]
        self.assertEqual(described["capacityProviderStrategy"], spot)
        self.assertNotIn("launchType", described)
        first = self.first_task()
        self.status_becomes(first, "RUNNING")
        self.assertEqual(self.task(first)["capacityProviderName"], "FARGATE_SPOT")
        # AWS reclaims one task: it stops with Spot's code and reason; the service starts another.
        self.knobs(spot_interruptions=H.strict.spot_reclaimed + 1)
        self.nudge(first)
        stopped = self.until("the interruption", lambda: self.task(first)["desiredStatus"] == "STOPPED" and self.task(first))
        self.assertEqual((stopped["stopCode"], stopped["stoppedReason"]), ("SpotInterruption", "Your Spot Task was interrupted."))
        self.until("a replacement", lambda: [t for t in self.tasks() if t["taskArn"] != first])
        # One interruption asked, one given: the replacement runs on.
        replacement = next(t["taskArn"] for t in self.tasks() if t["taskArn"] != first)
        self.status_becomes(replacement, "RUNNING")
        self.nudge(replacement)
        time.sleep(0.05)
        self.assertEqual(self.task(replacement)["desiredStatus"], "RUNNING")
        # Back to on-demand: the strategy is replaced, not merged.
        on_demand = [{"capacityProvider": "FARGATE", "weight": 1, "base": 0}]
        self.ecs.update_service(cluster=self.cluster, service=service, capacityProviderStrategy=on_demand, forceNewDeployment=True)
        described = self.ecs.describe_services(cluster=self.cluster, services=[service])["services"][0]
        self.assertEqual(described["capacityProviderStrategy"], on_demand)
        self.knobs()

    @covers("task-placement-error")
    def test_a_service_that_cannot_place_a_task_says_so_in_its_events(self):
        reason = "You\u2019ve reached the limit on the number of vCPUs you can run concurrently"
        self.knobs(placement_error=reason, task_placement_error=FOREVER)
        service = self.service()
        events = lambda: self.ecs.describe_services(cluster=self.cluster, services=[service])["services"][0]["events"]  # noqa: E731
        self.until("the placement event", lambda: any("unable to place" in e["message"] for e in events()))
        newest = events()[0]["message"]
        self.assertEqual(newest, f"(service gitlab) was unable to place a task. Reason: {reason}")
        self.assertEqual(self.tasks(), [])
        described = self.ecs.describe_services(cluster=self.cluster, services=[service])["services"][0]
        self.assertEqual((described["runningCount"], described["pendingCount"]), (0, 0))
        self.assertEqual(self.fired("task-placement-error"), 1, "once per 60 s of AWS time, not on every tick")
        self.knobs(placement_error=reason, task_placement_error=0)
        self.until("the event again", lambda: self.fired("task-placement-error") >= 3)
        # The limit raised: the task is placed and no more such events.
        self.knobs()
        self.first_task()
        placed = self.fired("task-placement-error")
        time.sleep(0.05)
        self.assertEqual(self.fired("task-placement-error"), placed)
        messages = [e["message"] for e in events()]  # newest first
        started = next(i for i, m in enumerate(messages) if "has started 1 tasks" in m)
        self.assertLess(started, next(i for i, m in enumerate(messages) if "unable to place" in m))

    @covers("ecs-exec", "exec-agent-start", "exec-not-enabled")
    def test_exec_needs_it_enabled_when_the_task_started_and_its_agent_running(self):
        self.knobs(exec_agent_start=FOREVER)
        service = self.service(exec_enabled=True)
        arn = self.first_task()
        running = self.status_becomes(arn, "RUNNING")
        self.assertTrue(running["enableExecuteCommand"])
        agent = lambda: self.task(arn)["containers"][0]["managedAgents"][0]  # noqa: E731
        self.assertEqual((agent()["name"], agent()["lastStatus"]), ("ExecuteCommandAgent", "PENDING"))
        execute = lambda task: self.ecs.execute_command(cluster=self.cluster, task=task, container="gitlab", interactive=True, command="/bin/sh")  # noqa: E731
        error = error_of(execute, arn)
        self.assertEqual((error["Code"], error["Message"]), ("InvalidParameterException", strict.EXEC_NOT_ENABLED))
        self.assertIn("agent isn\u2019t running", error["Message"])
        self.knobs(exec_agent_start=0)
        self.assertEqual(agent()["lastStatus"], "RUNNING")
        self.assertTrue(execute(arn)["session"]["sessionId"])
        self.assertEqual(self.fired("ecs-exec"), 1)
        self.knobs(exec_agent_state="STOPPED")
        self.assertEqual(agent()["lastStatus"], "STOPPED")
        self.assertEqual(code_of(execute, arn), "InvalidParameterException")
        self.assertEqual(self.fired("exec-not-enabled"), 2)
        self.assertEqual(code_of(execute, "0123456789abcdef0123456789abcdef"), "InvalidParameterException")
        self.assertEqual(self.fired("ecs-exec"), 2)

        # A task started without exec: no agent, refused, and enabling it later changes nothing.
        self.knobs(exec_agent_start=0)
        self.stop_services()
        self.new_cluster()
        service = self.service(exec_enabled=False)
        arn = self.first_task()
        running = self.status_becomes(arn, "RUNNING")
        self.assertFalse(running["enableExecuteCommand"])
        self.assertNotIn("managedAgents", running["containers"][0])
        self.assertEqual(code_of(execute, arn), "InvalidParameterException")
        self.ecs.update_service(cluster=self.cluster, service=service, enableExecuteCommand=True)
        self.assertEqual(code_of(execute, arn), "InvalidParameterException")
        self.assertEqual(self.fired("exec-not-enabled"), 4)


# =============================================================================================
# AWS Backup


def trust(condition=None):
    statement = {"Effect": "Allow", "Principal": {"Service": "backup.amazonaws.com"}, "Action": "sts:AssumeRole"}
    if condition:
        statement["Condition"] = condition
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


class BackupRules(ModelTest):
    def setUp(self):
        super().setUp()
        self.backup, self.efs, self.iam = client("backup"), client("efs"), client("iam")
        self.vault = name("vault")
        self.backup.create_backup_vault(BackupVaultName=self.vault, BackupVaultTags={"owner": "test"})
        role = name("backup")
        self.role = self.iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust())["Role"]["Arn"]
        self.iam.put_role_policy(RoleName=role, PolicyName="efs", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["elasticfilesystem:Backup", "elasticfilesystem:Restore", "elasticfilesystem:CreateFileSystem"], "Resource": "*"}]}))
        self.fs = self.efs.create_file_system(CreationToken=name("source"), PerformanceMode="generalPurpose", Encrypted=True)["FileSystemId"]
        self.fs_arn = f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:file-system/{self.fs}"
        data = H.strict.efs_dir(self.fs)
        with open(os.path.join(data, "repositories.txt"), "w") as f:
            f.write("gitlab data\n")

    def start(self, role=None, **extra):
        return self.backup.start_backup_job(BackupVaultName=self.vault, ResourceArn=self.fs_arn, IamRoleArn=role or self.role, **extra)

    def job(self, ident):
        return self.backup.describe_backup_job(BackupJobId=ident)

    def ends(self, ident, state=None):
        job = self.until("the backup job's end", lambda: self.job(ident)["State"] not in ("CREATED", "PENDING", "RUNNING", "ABORTING") and self.job(ident))
        if state:
            self.assertEqual(job["State"], state, job)
        return job

    def point(self, **extra):
        started = self.start(**extra)
        self.ends(started["BackupJobId"], "COMPLETED")
        return started["RecoveryPointArn"]

    @covers("backup-job", "backup-job-start")
    def test_a_backup_job_is_created_then_runs_then_completes(self):
        self.knobs(backup_job_start=FOREVER)
        waiting = self.start()
        job = self.job(waiting["BackupJobId"])
        self.assertEqual((job["State"], job["PercentDone"]), ("CREATED", "0.0"))
        self.knobs(backup_job_start=0, backup_job=FOREVER)
        running = self.start()["BackupJobId"]
        self.until("running", lambda: self.job(running)["State"] == "RUNNING")
        self.assertEqual(self.job(waiting["BackupJobId"])["State"], "CREATED", "still waiting: its start was set when it was created")
        self.knobs()
        done = self.start()
        job = self.ends(done["BackupJobId"], "COMPLETED")
        self.assertEqual((job["PercentDone"], job["RecoveryPointArn"]), ("100.0", done["RecoveryPointArn"]))
        self.assertGreater(job["BackupSizeInBytes"], 0)
        points = self.backup.list_recovery_points_by_resource(ResourceArn=self.fs_arn)["RecoveryPoints"]
        self.assertIn(done["RecoveryPointArn"], [p["RecoveryPointArn"] for p in points])
        # The idempotency token gives the same job back.
        token = str(uuid.uuid4())
        self.assertEqual(self.start(IdempotencyToken=token)["BackupJobId"], self.start(IdempotencyToken=token)["BackupJobId"])

    @covers("backup-start-window")
    def test_a_job_not_started_within_its_window_expires(self):
        self.knobs(backup_job_start=3 * 3600)  # three hours, past a two-hour window
        late = self.start(StartWindowMinutes=120)
        job = self.job(late["BackupJobId"])
        self.assertEqual(job["State"], "CREATED")
        self.assertAlmostEqual(job["StartBy"].timestamp() - job["CreationDate"].timestamp(), 7200 * SCALE, delta=0.05)
        expired = self.ends(late["BackupJobId"], "EXPIRED")
        self.assertEqual(expired["StatusMessage"], "Backup job expired before completion.")
        self.assertNotIn(late["RecoveryPointArn"], H.strict.recovery_points)
        self.assertEqual(self.fired("backup-start-window"), 1)
        # Within its window (the default 30 s start): completed.
        self.knobs()
        self.ends(self.start(StartWindowMinutes=60)["BackupJobId"], "COMPLETED")
        # A job that runs past its complete window expires too.
        self.knobs(backup_job=7200)
        long = self.start(StartWindowMinutes=60, CompleteWindowMinutes=60)["BackupJobId"]
        self.assertEqual(self.ends(long, "EXPIRED")["StatusMessage"], "Backup job expired before completion.")
        # A window under an hour is refused.
        self.assertEqual(code_of(self.start, StartWindowMinutes=59), "InvalidParameterValueException")
        self.assertEqual(self.fired("backup-start-window"), 3)

    @covers("backup-job-outcome")
    def test_a_job_can_be_made_to_fail_or_abort(self):
        for state in ("FAILED", "ABORTED"):
            self.knobs(backup_job_outcome={"state": state, "message": f"Access denied ({state})"})
            started = self.start()
            job = self.ends(started["BackupJobId"], state)
            self.assertEqual(job["StatusMessage"], f"Access denied ({state})")
            self.assertNotIn(started["RecoveryPointArn"], H.strict.recovery_points)
        self.knobs()
        self.point()
        self.assertEqual(self.fired("backup-job-outcome"), 2)

    @covers("backup-job-stop")
    def test_a_job_that_has_not_ended_can_be_stopped(self):
        self.knobs(backup_job_start=FOREVER, backup_job_stop=FOREVER)
        created = self.start()["BackupJobId"]
        self.backup.stop_backup_job(BackupJobId=created)
        self.assertEqual(self.job(created)["State"], "ABORTING")
        self.assertEqual(code_of(self.backup.stop_backup_job, BackupJobId=created), "InvalidRequestException")
        self.knobs(backup_job_start=0, backup_job=FOREVER, backup_job_stop=0)
        running = self.start()
        self.until("running", lambda: self.job(running["BackupJobId"])["State"] == "RUNNING")
        self.backup.stop_backup_job(BackupJobId=running["BackupJobId"])
        self.assertEqual(self.ends(running["BackupJobId"], "ABORTED")["StatusMessage"], "Backup job was stopped by user.")
        self.assertNotIn(running["RecoveryPointArn"], H.strict.recovery_points)
        # Ended: refused, and the job stays as it ended.
        self.knobs()
        done = self.start()["BackupJobId"]
        self.ends(done, "COMPLETED")
        error = error_of(self.backup.stop_backup_job, BackupJobId=done)
        self.assertEqual(error["Code"], "InvalidRequestException")
        self.assertIn("COMPLETED", error["Message"])
        self.assertEqual(self.job(done)["State"], "COMPLETED")
        self.assertEqual(code_of(self.backup.stop_backup_job, BackupJobId=str(uuid.uuid4())), "ResourceNotFoundException")

    @covers("recovery-point-tags")
    def test_a_recovery_point_carries_the_tags_its_job_was_given(self):
        point = self.point(RecoveryPointTags={"gitlab-version": "18.11.7", "stack": "team"})
        self.assertEqual(self.backup.list_tags(ResourceArn=point)["Tags"], {"gitlab-version": "18.11.7", "stack": "team"})
        untagged = self.point()
        self.assertEqual(self.backup.list_tags(ResourceArn=untagged)["Tags"], {})
        vault_arn = self.backup.describe_backup_vault(BackupVaultName=self.vault)["BackupVaultArn"]
        self.assertEqual(self.backup.list_tags(ResourceArn=vault_arn)["Tags"], {"owner": "test"}, "a vault's are moto's")
        missing = point.rsplit(":", 1)[0] + ":" + str(uuid.uuid4()).upper()
        self.assertEqual(code_of(self.backup.list_tags, ResourceArn=missing), "ResourceNotFoundException")
        self.assertEqual(self.fired("recovery-point-tags"), 3)

    @covers("backup-role-rights")
    def test_a_job_runs_with_its_roles_rights_and_fails_without_them(self):
        role = name("narrow")
        arn = self.iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust())["Role"]["Arn"]
        other = self.fs_arn.rsplit("/", 1)[0] + "/fs-00000000"
        self.iam.put_role_policy(RoleName=role, PolicyName="other", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "elasticfilesystem:Backup", "Resource": other}]}))
        job = self.ends(self.start(role=arn)["BackupJobId"], "FAILED")
        self.assertIn("not authorized to perform elasticfilesystem:Backup", job["StatusMessage"])
        # Allowed on this file system (IAM's wildcards): it completes; a restore still needs its own rights.
        self.iam.put_role_policy(RoleName=role, PolicyName="other", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "elasticfilesystem:Back*", "Resource": self.fs_arn}]}))
        done = self.ends(self.start(role=arn)["BackupJobId"], "COMPLETED")
        restore = self.backup.start_restore_job(RecoveryPointArn=done["RecoveryPointArn"], IamRoleArn=arn, ResourceType="EFS",
                                                Metadata={"newFileSystem": "true", "CreationToken": name("restored")})["RestoreJobId"]
        ended = self.until("the restore's end", lambda: (j := self.backup.describe_restore_job(RestoreJobId=restore))["Status"] in ("COMPLETED", "FAILED", "ABORTED") and j)
        self.assertEqual(ended["Status"], "FAILED")
        self.assertIn("elasticfilesystem:Restore", ended["StatusMessage"])
        self.assertEqual(self.fired("backup-role-rights"), 2)

    @covers("vault-access-policy")
    def test_a_vault_keeps_its_access_policy_until_it_is_deleted(self):
        self.assertEqual(code_of(self.backup.get_backup_vault_access_policy, BackupVaultName=self.vault), "ResourceNotFoundException")
        policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "backup:DeleteRecoveryPoint", "Resource": "*"}]})
        self.backup.put_backup_vault_access_policy(BackupVaultName=self.vault, Policy=policy)
        self.assertEqual(json.loads(self.backup.get_backup_vault_access_policy(BackupVaultName=self.vault)["Policy"]), json.loads(policy))
        self.assertEqual(code_of(self.backup.put_backup_vault_access_policy, BackupVaultName=self.vault, Policy="{not json"), "InvalidParameterValueException")
        self.assertEqual(code_of(self.backup.put_backup_vault_access_policy, BackupVaultName=name("none"), Policy=policy), "ResourceNotFoundException")
        self.backup.delete_backup_vault_access_policy(BackupVaultName=self.vault)
        self.assertEqual(code_of(self.backup.get_backup_vault_access_policy, BackupVaultName=self.vault), "ResourceNotFoundException")

    @covers("backup-vault-not-empty")
    def test_a_vault_goes_once_empty(self):
        point = self.point()
        self.assertEqual(code_of(self.backup.delete_backup_vault, BackupVaultName=self.vault), "InvalidRequestException")
        self.assertEqual(self.backup.describe_backup_vault(BackupVaultName=self.vault)["NumberOfRecoveryPoints"], 1)
        self.backup.delete_recovery_point(BackupVaultName=self.vault, RecoveryPointArn=point)
        self.backup.delete_backup_vault(BackupVaultName=self.vault)
        self.assertEqual(self.fired("backup-vault-not-empty"), 1)

    @covers("trust-policy-condition-keys")
    def test_a_service_role_trusting_backup_only_with_source_conditions_cannot_be_assumed(self):
        point = self.point()
        for key in ("aws:SourceAccount", "aws:SourceArn"):
            role = self.iam.create_role(RoleName=name("conditioned"), AssumeRolePolicyDocument=trust({"StringEquals": {key: ACCOUNT}}))["Role"]["Arn"]
            job = self.ends(self.start(role=role)["BackupJobId"], "FAILED")
            self.assertEqual(job["StatusMessage"], f"IAM Role {role} cannot be assumed by AWS Backup")
            restore = self.backup.start_restore_job(RecoveryPointArn=point, IamRoleArn=role, Metadata=self.metadata(point))["RestoreJobId"]
            ended = self.until("the restore's end", lambda: self.restore(restore)["Status"] in ("FAILED", "COMPLETED") and self.restore(restore))
            self.assertEqual((ended["Status"], ended["StatusMessage"]), ("FAILED", f"IAM Role {role} cannot be assumed by AWS Backup"))
        self.assertEqual(self.fired("trust-policy-condition-keys"), 4)
        # Another condition key, or none: assumed.
        other_name = name("other")
        other = self.iam.create_role(RoleName=other_name, AssumeRolePolicyDocument=trust({"Bool": {"aws:SecureTransport": "true"}}))["Role"]["Arn"]
        self.iam.attach_role_policy(RoleName=other_name, PolicyArn="arn:aws:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup")
        self.ends(self.start(role=other)["BackupJobId"], "COMPLETED")
        self.ends(self.start()["BackupJobId"], "COMPLETED")
        self.assertEqual(self.fired("trust-policy-condition-keys"), 4)

    # -- restores ---------------------------------------------------------------------------------

    def metadata(self, point, **overrides):
        metadata = self.backup.get_recovery_point_restore_metadata(BackupVaultName=self.vault, RecoveryPointArn=point)["RestoreMetadata"]
        return {**metadata, "newFileSystem": "true", "CreationToken": name("restore"), **overrides}

    def restore(self, ident):
        return self.backup.describe_restore_job(RestoreJobId=ident)

    def restore_ends(self, ident, status):
        job = self.until("the restore's end", lambda: self.restore(ident)["Status"] not in ("PENDING", "RUNNING") and self.restore(ident))
        self.assertEqual(job["Status"], status, job)
        return job

    @covers("restore-job", "restore-metadata")
    def test_a_restore_needs_the_points_file_system_and_a_creation_token(self):
        point = self.point()
        source = self.efs.describe_file_systems(FileSystemId=self.fs)["FileSystems"][0]
        metadata = self.backup.get_recovery_point_restore_metadata(BackupVaultName=self.vault, RecoveryPointArn=point)["RestoreMetadata"]
        self.assertEqual(metadata, {"file-system-id": self.fs, "Encrypted": "true", "PerformanceMode": "generalPurpose",
                                    "CreationToken": source["CreationToken"]})
        start = lambda metadata, **extra: self.backup.start_restore_job(RecoveryPointArn=point, IamRoleArn=self.role, Metadata=metadata, **extra)  # noqa: E731
        refused = [
            {k: v for k, v in self.metadata(point).items() if k != "newFileSystem"},
            {k: v for k, v in self.metadata(point).items() if k != "CreationToken"},
            self.metadata(point, CreationToken="x" * 65),
        ]
        for bad in refused:
            self.assertEqual(code_of(start, bad), "InvalidParameterValueException", bad)
        self.assertEqual(self.fired("restore-metadata"), 3)
        wrong = start(self.metadata(point, **{"file-system-id": "fs-0123456789abcdef0"}))["RestoreJobId"]
        self.assertIn("fs-0123456789abcdef0", self.restore_ends(wrong, "FAILED")["StatusMessage"])
        self.assertEqual(self.fired("restore-metadata"), 4)

        token = str(uuid.uuid4())
        job = start(self.metadata(point, CreationToken="t" * 64), IdempotencyToken=token)["RestoreJobId"]
        self.assertEqual(start(self.metadata(point), IdempotencyToken=token)["RestoreJobId"], job, "the same token: the same job")
        done = self.restore_ends(job, "COMPLETED")
        new_fs = done["CreatedResourceArn"].rsplit("/", 1)[-1]
        self.assertEqual(self.efs.describe_file_systems(FileSystemId=new_fs)["FileSystems"][0]["CreationToken"], "t" * 64)
        restored = [d for d in os.listdir(H.strict.efs_dir(new_fs)) if d.startswith("aws-backup-restore_")]
        self.assertEqual(len(restored), 1)
        self.assertTrue(os.path.exists(os.path.join(H.strict.efs_dir(new_fs), restored[0], "repositories.txt")))
        self.assertEqual(self.fired("restore-metadata"), 4)

    @covers("restore-creation-token-taken")
    def test_a_restore_that_copies_the_source_creation_token_fails(self):
        point = self.point()
        copied = self.backup.get_recovery_point_restore_metadata(BackupVaultName=self.vault, RecoveryPointArn=point)["RestoreMetadata"]
        job = self.backup.start_restore_job(RecoveryPointArn=point, IamRoleArn=self.role, Metadata={**copied, "newFileSystem": "true"})["RestoreJobId"]
        message = self.restore_ends(job, "FAILED")["StatusMessage"]
        self.assertTrue(message.startswith("FileSystemAlreadyExists:") and self.fs in message, message)
        self.assertEqual(self.fired("restore-creation-token-taken"), 1)
        fresh = self.backup.start_restore_job(RecoveryPointArn=point, IamRoleArn=self.role, Metadata=self.metadata(point))["RestoreJobId"]
        self.restore_ends(fresh, "COMPLETED")
        self.assertEqual(self.fired("restore-creation-token-taken"), 1)

    @covers("restore-job-outcome")
    def test_a_restore_can_be_made_to_fail_or_abort(self):
        point = self.point()
        for status in ("FAILED", "ABORTED"):
            self.knobs(restore_job_outcome={"state": status, "message": f"restore {status}"})
            metadata = self.metadata(point)
            job = self.backup.start_restore_job(RecoveryPointArn=point, IamRoleArn=self.role, Metadata=metadata)["RestoreJobId"]
            ended = self.restore_ends(job, status)
            self.assertEqual(ended["StatusMessage"], f"restore {status}")
            self.assertNotIn("CreatedResourceArn", ended)
            self.assertEqual(self.efs.describe_file_systems(CreationToken=metadata["CreationToken"])["FileSystems"], [])
        self.knobs()
        job = self.backup.start_restore_job(RecoveryPointArn=point, IamRoleArn=self.role, Metadata=self.metadata(point))["RestoreJobId"]
        self.restore_ends(job, "COMPLETED")
        self.assertEqual(self.fired("restore-job-outcome"), 2)


# =============================================================================================
# CloudWatch Logs, Service Quotas


class LogsAndQuotaRules(ModelTest):
    @covers("logs-kms-key")
    def test_a_log_group_takes_a_key_only_if_its_policy_lets_cloudwatch_logs_use_it_for_that_group(self):
        logs, kms = client("logs"), client("kms")
        group = f"/test/{name('keyed')}"
        root = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}
        bare = kms.create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": [root]}))["KeyMetadata"]["Arn"]
        self.assertEqual(code_of(logs.create_log_group, logGroupName=group, kmsKeyId=bare), "AccessDeniedException")
        for_logs = {"Effect": "Allow", "Principal": {"Service": f"logs.{REGION}.amazonaws.com"}, "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                    "Resource": "*", "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/test/*"}}}
        key = kms.create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": [root, for_logs]}))["KeyMetadata"]["Arn"]
        logs.create_log_group(logGroupName=group, kmsKeyId=key)
        shown = lambda g: logs.describe_log_groups(logGroupNamePrefix=g)["logGroups"][0].get("kmsKeyId")  # noqa: E731
        self.assertEqual(shown(group), key)
        # Associated later, and removed: DescribeLogGroups says so.
        other = f"/test/{name('later')}"
        logs.create_log_group(logGroupName=other)
        self.assertIsNone(shown(other))
        logs.associate_kms_key(logGroupName=other, kmsKeyId=key)
        self.assertEqual(shown(other), key)
        logs.disassociate_kms_key(logGroupName=other)
        self.assertIsNone(shown(other))
        # A group outside the key's context is refused.
        outside = f"/elsewhere/{name('x')}"
        logs.create_log_group(logGroupName=outside)
        self.assertEqual(code_of(logs.associate_kms_key, logGroupName=outside, kmsKeyId=key), "AccessDeniedException")
        self.assertGreaterEqual(self.fired("logs-kms-key"), 5)


    @covers("logs-empty-pages")
    def test_filter_log_events_may_answer_empty_pages_before_the_events(self):
        logs = client("logs")
        group = f"/test/{name('logs')}"
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName="s")
        stamp = int(time.time() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName="s", logEvents=[{"timestamp": stamp + i, "message": f"line {i}"} for i in range(3)])
        self.knobs(logs_empty_pages=2)
        first = logs.filter_log_events(logGroupName=group, startTime=stamp - 1000)
        self.assertEqual(first["events"], [])
        second = logs.filter_log_events(logGroupName=group, startTime=stamp - 1000, nextToken=first["nextToken"])
        self.assertEqual(second["events"], [])
        self.assertNotEqual(second["nextToken"], first["nextToken"], "a token is never given twice")
        third = logs.filter_log_events(logGroupName=group, startTime=stamp - 1000, nextToken=second["nextToken"])
        self.assertEqual([e["message"] for e in third["events"]], ["line 0", "line 1", "line 2"])
        self.assertEqual(self.fired("logs-empty-pages"), 2)
        # A paginator reads through the empty pages; without the knob there are none.
        pages = list(logs.get_paginator("filter_log_events").paginate(logGroupName=group))
        self.assertEqual([e["message"] for p in pages for e in p["events"]], ["line 0", "line 1", "line 2"])
        self.assertEqual(len(pages), 3)
        self.knobs()
        direct = logs.filter_log_events(logGroupName=group)
        self.assertEqual(len(direct["events"]), 3)
        self.assertEqual(self.fired("logs-empty-pages"), 4)

    @covers("service-quotas")
    def test_quotas_have_defaults_and_an_applied_value_only_once_changed(self):
        quotas = client("service-quotas")
        defaults = {("fargate", "L-3032A538"): 6.0, ("fargate", "L-36FBB829"): 6.0, ("ec2", "L-0263D0A3"): 5.0,
                    ("elasticloadbalancing", "L-53DA6B97"): 50.0, ("elasticloadbalancing", "L-69A177A2"): 50.0}
        for (service, code), value in defaults.items():
            quota = quotas.get_aws_default_service_quota(ServiceCode=service, QuotaCode=code)["Quota"]
            self.assertEqual((quota["Value"], quota["QuotaCode"], quota["ServiceCode"]), (value, code, service))
            self.assertEqual(code_of(quotas.get_service_quota, ServiceCode=service, QuotaCode=code), "NoSuchResourceException")
        self.knobs(quotas={"L-3032A538": 1.0})
        applied = quotas.get_service_quota(ServiceCode="fargate", QuotaCode="L-3032A538")["Quota"]
        self.assertEqual((applied["Value"], applied["QuotaName"]), (1.0, "Fargate On-Demand vCPU resource count"))
        self.assertIn(f":{ACCOUNT}:fargate/L-3032A538", applied["QuotaArn"])
        self.assertEqual(quotas.get_aws_default_service_quota(ServiceCode="fargate", QuotaCode="L-3032A538")["Quota"]["Value"], 6.0)
        self.assertEqual(code_of(quotas.get_service_quota, ServiceCode="fargate", QuotaCode="L-36FBB829"), "NoSuchResourceException")
        self.assertEqual(code_of(quotas.get_aws_default_service_quota, ServiceCode="fargate", QuotaCode="L-00000000"), "NoSuchResourceException")
        # moto's vpc quotas still answer (and their defaults, which moto lacks).
        self.assertEqual(quotas.get_service_quota(ServiceCode="vpc", QuotaCode="L-F678F1CE")["Quota"]["Value"], 5.0)
        self.assertEqual(quotas.get_aws_default_service_quota(ServiceCode="vpc", QuotaCode="L-F678F1CE")["Quota"]["Value"], 5.0)
        # The capture calls them what they are.
        calls = [e for e in self.entries() if e.get("service") == "servicequotas"]
        self.assertTrue(calls and all(not e["mutating"] for e in calls), calls)
        self.assertEqual({e["action"] for e in calls}, {"GetServiceQuota", "GetAWSDefaultServiceQuota"})


# =============================================================================================
# The registry and the proxy


def missing_handler(reference):
    """Why a handled_by entry names nothing in the product (None when it names a function of
    the file: `fn NAME` or `NAME(`, and for `Type::NAME` an impl of Type there too). A pending
    entry is the Rust side's next function: not looked for."""
    if reference.endswith(PENDING):
        return None
    path, function = reference.split(":", 1)
    source_path = os.path.join(ROOT, path)
    if not os.path.isfile(source_path):
        return f"{path} does not exist"
    with open(source_path, encoding="utf-8") as f:
        text = f.read()
    *owner, fn = function.split("::")
    if not re.search(rf"\bfn {re.escape(fn)}\b|\b{re.escape(fn)}\(", text):
        return f"{path} has no fn {fn}"
    if owner and not re.search(rf"\bimpl\b[^{{]*\b{re.escape(owner[0])}\b", text):
        return f"{path} has no impl of {owner[0]}"
    return None


# =============================================================================================
# RDS


class RdsRules(ModelTest):
    def instance(self, ident):
        """An instance in a subnet group of two subnets, behind one security group."""
        vpc = self.vpc()
        subnets = [self.subnet(vpc, "10.0.1.0/24", "us-east-1a"), self.subnet(vpc, "10.0.2.0/24", "us-east-1b")]
        group = self.group(vpc)
        rds = client("rds")
        subnet_group = name("dbsubnets")
        rds.create_db_subnet_group(DBSubnetGroupName=subnet_group, DBSubnetGroupDescription="test", SubnetIds=subnets)
        rds.create_db_instance(
            DBInstanceIdentifier=ident, DBInstanceClass="db.t4g.medium", Engine="postgres", AllocatedStorage=20,
            MasterUsername="gitlab", MasterUserPassword="not-a-real-one-1", DBSubnetGroupName=subnet_group,
            VpcSecurityGroupIds=[group],
        )
        return rds, subnet_group, subnets, group

    def status(self, rds, ident):
        return rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]["DBInstanceStatus"]

    @covers("db-instance-creating")
    def test_a_new_instance_is_creating_refuses_changes_and_its_interface_holds_its_network(self):
        self.knobs(db_instance_creating=FOREVER)
        ident = name("db")
        rds, _, subnets, group = self.instance(ident)
        self.assertEqual(self.status(rds, ident), "creating")
        self.assertEqual(code_of(rds.delete_db_instance, DBInstanceIdentifier=ident, SkipFinalSnapshot=True), "InvalidDBInstanceState")
        self.assertEqual(code_of(rds.modify_db_instance, DBInstanceIdentifier=ident, DeletionProtection=True, ApplyImmediately=True), "InvalidDBInstanceState")
        held = [e for s in subnets for e in self.interfaces_in(s)]
        self.assertEqual([e["Description"] for e in held], ["RDSNetworkInterface"])
        self.assertTrue(held[0]["RequesterManaged"])
        self.assertEqual(code_of(self.ec2.delete_subnet, SubnetId=held[0]["SubnetId"]), "DependencyViolation")
        self.assertEqual(code_of(self.ec2.delete_security_group, GroupId=group), "DependencyViolation")
        self.knobs()
        self.until("available", lambda: self.status(rds, ident) == "available")

    @covers("db-instance-deleting", "db-subnet-group-in-use", "db-snapshot-creating")
    def test_a_deleted_instance_goes_over_minutes_holding_its_subnet_group_and_network(self):
        self.knobs(db_instance_creating=0, db_instance_deleting=20000, db_snapshot_creating=FOREVER)
        ident = name("db")
        rds, subnet_group, subnets, group = self.instance(ident)
        rds.delete_db_instance(DBInstanceIdentifier=ident, FinalDBSnapshotIdentifier=f"{ident}-final")
        self.assertEqual(self.status(rds, ident), "deleting")
        snapshot = rds.describe_db_snapshots(DBSnapshotIdentifier=f"{ident}-final")["DBSnapshots"][0]
        self.assertEqual(snapshot["Status"], "creating")
        error = error_of(rds.delete_db_subnet_group, DBSubnetGroupName=subnet_group)
        self.assertEqual(error["Code"], "InvalidDBSubnetGroupStateFault")
        self.assertIn(ident, error["Message"])
        held = [e for s in subnets for e in self.interfaces_in(s)]
        self.assertEqual(code_of(self.ec2.delete_subnet, SubnetId=held[0]["SubnetId"]), "DependencyViolation")
        # Gone after its time: not found, its interface released, its subnet group free.
        self.until("gone", lambda: code_of(rds.describe_db_instances, DBInstanceIdentifier=ident) == "DBInstanceNotFound")
        self.until("released", lambda: not [e for s in subnets for e in self.interfaces_in(s)])
        rds.delete_db_subnet_group(DBSubnetGroupName=subnet_group)
        self.ec2.delete_security_group(GroupId=group)
        self.knobs()
        snapshot = rds.describe_db_snapshots(DBSnapshotIdentifier=f"{ident}-final")["DBSnapshots"][0]
        self.assertEqual(snapshot["Status"], "available")

    @covers("db-restore-managed-password")
    def test_a_restore_asks_no_managed_password_and_has_none_until_modified(self):
        self.knobs(db_instance_creating=0)
        ident = name("db")
        rds, subnet_group, _, group = self.instance(ident)
        rds.modify_db_instance(DBInstanceIdentifier=ident, ManageMasterUserPassword=True, ApplyImmediately=True)
        rds.create_db_snapshot(DBInstanceIdentifier=ident, DBSnapshotIdentifier=f"{ident}-s")
        asked = dict(DBInstanceIdentifier=f"{ident}-r", DBSnapshotIdentifier=f"{ident}-s", DBSubnetGroupName=subnet_group,
                     VpcSecurityGroupIds=[group])
        self.assertEqual(code_of(rds.restore_db_instance_from_db_snapshot, ManageMasterUserPassword=True, **asked),
                         "InvalidParameterCombination")
        rds.restore_db_instance_from_db_snapshot(**asked)
        restored = rds.describe_db_instances(DBInstanceIdentifier=f"{ident}-r")["DBInstances"][0]
        self.assertNotIn("MasterUserSecret", restored)
        rds.modify_db_instance(DBInstanceIdentifier=f"{ident}-r", ManageMasterUserPassword=True, ApplyImmediately=True)
        restored = rds.describe_db_instances(DBInstanceIdentifier=f"{ident}-r")["DBInstances"][0]
        self.assertIn("SecretArn", restored["MasterUserSecret"])


class SecretRules(ModelTest):
    @covers("secret-rotation-schedule")
    def test_a_rotation_schedule_is_answered_back(self):
        sm = client("secretsmanager")
        arn = sm.create_secret(Name=name("s"), SecretString='{"password": "x"}')["ARN"]
        sm.rotate_secret(SecretId=arn, RotationRules={"ScheduleExpression": "cron(0 4 1 1 ? *)"}, RotateImmediately=False)
        rules = sm.describe_secret(SecretId=arn)["RotationRules"]
        self.assertEqual(rules["ScheduleExpression"], "cron(0 4 1 1 ? *)")


class Registry(unittest.TestCase):
    def test_every_rule_has_its_seconds_source_and_handlers(self):
        for rule, entry in RULES.items():
            with self.subTest(rule):
                self.assertEqual(len(entry), 3)
                seconds, source, handled_by = entry
                self.assertTrue(seconds is None or (isinstance(seconds, (int, float)) and seconds >= 0))
                self.assertTrue(source.strip())
                self.assertTrue(handled_by and all(isinstance(h, str) and re.fullmatch(r"[\w/.-]+\.rs:[\w:]+( \(pending\))?", h) for h in handled_by), handled_by)
                self.assertIs(entry.seconds, seconds)

    def test_every_handler_named_exists_in_the_product(self):
        for rule, entry in RULES.items():
            for reference in entry.handled_by:
                with self.subTest(rule=rule, handler=reference):
                    self.assertIsNone(missing_handler(reference))

    def test_a_pending_handler_is_not_looked_for_and_a_wrong_one_is_reported(self):
        self.assertIsNone(missing_handler(strict.pending("src/steps/nothing.rs:not_yet")))
        self.assertIn("does not exist", missing_handler("src/steps/nothing.rs:not_yet"))
        self.assertIn("has no fn", missing_handler("src/aws/mod.rs:no_such_function"))
        self.assertIn("has no impl", missing_handler("src/aws/mod.rs:NoSuchType::fresh"))
        self.assertIsNone(missing_handler("src/aws/mod.rs:fresh"))

    def test_every_rule_is_exercised_by_a_test(self):
        self.assertEqual(sorted(set(RULES) - COVERED), [])


class Proxy(ModelTest):
    def test_an_aws_error_from_the_models_own_call_is_the_answer_not_a_dropped_connection(self):
        class Boom(Exception):
            response = {"Error": {"Code": "FileSystemNotFound", "Message": "File system 'fs-1' does not exist."},
                        "ResponseMetadata": {"HTTPStatusCode": 404}}

        self.assertEqual(emulator.model_error(Boom()), (404, "FileSystemNotFound", "File system 'fs-1' does not exist."))
        with contextlib.redirect_stderr(io.StringIO()) as printed:
            status, code, _ = emulator.model_error(RuntimeError("bug"))
        self.assertIn("RuntimeError: bug", printed.getvalue())
        self.assertEqual((status, code), (500, "InternalFailure"))

    def test_a_backup_of_a_missing_file_system_is_refused(self):
        backup = client("backup")
        vault = name("vault")
        backup.create_backup_vault(BackupVaultName=vault)
        error = error_of(backup.start_backup_job, BackupVaultName=vault, IamRoleArn=f"arn:aws:iam::{ACCOUNT}:role/x",
                         ResourceArn=f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:file-system/fs-00000000")
        self.assertEqual(error["Code"], "InvalidParameterValueException")


    def test_cloudwatch_answers_in_cbor_carry_the_types_the_sdk_decodes(self):
        # CI failed once on a whole-second timestamp: cbor2 wrote it as an integer under tag 1,
        # and the SDK (which decodes tag 1 as f64) refused DescribeAlarms ("expected f64").
        answer = {"MetricAlarms": [{"AlarmName": "idle", "Threshold": 1, "EvaluationPeriods": 6,
                                    "StateUpdatedTimestamp": 1796440237, "Dimensions": [{"Name": "A", "Value": "b"}],
                                    "AlarmConfigurationUpdatedTimestamp": "2026-12-05T03:10:37Z"}]}
        decoded = emulator.cbor2.loads(emulator.cbor2.dumps(emulator.cbor_document(answer)))
        alarm = decoded["MetricAlarms"][0]
        for field in ("StateUpdatedTimestamp", "AlarmConfigurationUpdatedTimestamp"):
            with self.subTest(field):
                self.assertIsInstance(alarm[field], emulator.datetime.datetime)
        encoded = emulator.cbor2.dumps(emulator.cbor_document({"StateUpdatedTimestamp": 1796440237}))
        self.assertIn(b"\xc1\xfb", encoded, "tag 1 followed by a double")
        self.assertEqual(alarm["StateUpdatedTimestamp"].timestamp(), 1796440237)
        self.assertIsInstance(alarm["Threshold"], float)
        self.assertIsInstance(alarm["EvaluationPeriods"], int)
        self.assertEqual(alarm["Dimensions"], [{"Name": "A", "Value": "b"}])


if __name__ == "__main__":
    unittest.main()
