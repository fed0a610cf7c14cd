//! Test harness: an emulator per test (moto behind a recording, fault-injecting proxy, see
//! harness/emulator.py), the real binary run against it, and EC2 read-back straight from moto.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use ground::keys::Kind;
use serde_json::Value;

pub mod policy;

pub const REGION: &str = "us-east-1";

/// The capture's `service` for the strict model's own events (see harness/emulator.py).
const MODEL_EVENTS: &str = "model";

/// Percent-decoding, for documents IAM returns URL-encoded.
pub fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A recorded resource's id, from a state file.
pub fn id(state: &Value, key: &str) -> String {
    state["resources"][key]["id"].as_str().unwrap_or_else(|| panic!("{key} has no id in {state:#}")).to_string()
}

pub fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(venv.exists(), "{} is missing: run `make test` (it installs moto into .venv)", venv.display());
    venv
}

pub struct Emulator {
    child: Child,
    _stdin: ChildStdin,
    /// What the tool is pointed at (the proxy).
    pub endpoint: String,
    /// moto itself, for read-back that should not be recorded.
    pub moto: String,
    pub dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub service: String,
    pub action: String,
    pub mutating: bool,
    /// The harness answered with an injected error or dropped the connection.
    pub fault: bool,
    /// The request's body (form or JSON), for parameters.
    pub body: String,
    /// The strict model refused the call with this AWS error code (as AWS would have).
    pub refused: Option<String>,
    /// The strict model's rule that refused or answered the call, or that acted on its own.
    pub rule: Option<String>,
}

impl Emulator {
    pub fn start() -> Emulator {
        Emulator::start_with(&[])
    }

    /// With extra harness options, e.g. `["--model-scale", "0.01"]` for the latency model.
    pub fn start_with(options: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/emulator.py"))
            .arg("--capture")
            .arg(dir.path().join("capture.jsonl"))
            .arg("--faults")
            .arg(dir.path().join("faults.json"))
            .arg("--control")
            .arg(dir.path().join("control.json"))
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the emulator");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("emulator banner");
        let banner: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad emulator banner {line:?}: {e}"));
        Emulator {
            child,
            _stdin: stdin,
            endpoint: banner["endpoint"].as_str().expect("endpoint").to_string(),
            moto: banner["moto"].as_str().expect("moto").to_string(),
            dir,
        }
    }

    /// The calls the tool made through the proxy so far. The strict model's own events (an
    /// interface released minutes after its owner went, a task stopped) are left out: they fire
    /// on the model's clock, so they can land between any two commands; `rules_fired` has them.
    pub fn calls(&self) -> Vec<Call> {
        self.capture().into_iter().filter(|c| c.service != MODEL_EVENTS).collect()
    }

    /// Everything captured: the tool's calls and the strict model's events.
    fn capture(&self) -> Vec<Call> {
        let text = std::fs::read_to_string(self.dir.path().join("capture.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| Call {
                service: v["service"].as_str().unwrap_or_default().to_string(),
                action: v["action"].as_str().unwrap_or_default().to_string(),
                mutating: v["mutating"].as_bool().unwrap_or(true),
                fault: v["fault"].as_bool().unwrap_or(false),
                body: v["body"].as_str().unwrap_or_default().to_string(),
                refused: v["refused"].as_str().map(str::to_string),
                rule: v["rule"].as_str().map(str::to_string),
            })
            .collect()
    }

    pub fn clear_calls(&self) {
        std::fs::write(self.dir.path().join("capture.jsonl"), "").expect("clear capture");
    }

    /// Replaces the fault rules (see harness/emulator.py).
    pub fn set_faults(&self, rules: Value) {
        let path = self.dir.path().join("faults.json");
        let tmp = self.dir.path().join("faults.json.tmp");
        std::fs::write(&tmp, rules.to_string()).expect("write faults");
        std::fs::rename(tmp, path).expect("install faults");
    }

    /// Sets the strict model's knobs (see harness/strict.py), e.g. `{"gitlab_first_boot": 100}`.
    pub fn set_control(&self, knobs: Value) {
        let path = self.dir.path().join("control.json");
        let tmp = self.dir.path().join("control.json.tmp");
        std::fs::write(&tmp, knobs.to_string()).expect("write control");
        std::fs::rename(tmp, path).expect("install control");
    }

    /// The rules of the strict model that refused a call or acted on their own so far.
    pub fn rules_fired(&self) -> Vec<String> {
        self.capture().into_iter().filter_map(|c| c.rule).collect()
    }

    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        self.clients().ec2
    }

    /// SDK clients pointed straight at moto (their calls are not recorded).
    pub fn clients(&self) -> Clients {
        self.clients_at(&self.moto)
    }

    /// SDK clients through the harness, as the tool sees AWS: with what the strict model adds
    /// (target health, task states, backup jobs...). Their calls are recorded.
    pub fn aws_clients(&self) -> Clients {
        self.clients_at(&self.endpoint)
    }

    fn clients_at(&self, endpoint: &str) -> Clients {
        macro_rules! client {
            ($krate:ident) => {
                client!($krate, endpoint)
            };
            ($krate:ident, $endpoint:expr) => {{
                let endpoint = $endpoint;
                let config = $krate::Config::builder()
                    .behavior_version($krate::config::BehaviorVersion::latest())
                    .region($krate::config::Region::new(REGION))
                    .endpoint_url(endpoint)
                    .credentials_provider($krate::config::Credentials::new("test", "test", None, None, "tests"))
                    .build();
                $krate::Client::from_conf(config)
            }};
        }
        Clients {
            acm: client!(aws_sdk_acm),
            scaling: client!(aws_sdk_applicationautoscaling),
            backup: client!(aws_sdk_backup),
            cloudtrail: client!(aws_sdk_cloudtrail),
            // Always through the harness: the SDK speaks CBOR to CloudWatch, moto JSON, and the
            // harness translates (it adds nothing else to CloudWatch).
            cloudwatch: client!(aws_sdk_cloudwatch, self.endpoint.as_str()),
            ec2: client!(aws_sdk_ec2),
            ecs: client!(aws_sdk_ecs),
            efs: client!(aws_sdk_efs),
            elb: client!(aws_sdk_elasticloadbalancingv2),
            iam: client!(aws_sdk_iam),
            kms: client!(aws_sdk_kms),
            lambda: client!(aws_sdk_lambda),
            logs: client!(aws_sdk_cloudwatchlogs),
            rds: client!(aws_sdk_rds),
            route53: client!(aws_sdk_route53),
            s3: client!(aws_sdk_s3),
            secrets: client!(aws_sdk_secretsmanager),
            ssm: client!(aws_sdk_ssm),
            sts: client!(aws_sdk_sts),
            waf: client!(aws_sdk_wafv2),
        }
    }

    /// The directory the harness uses as a file system's content.
    pub fn efs_dir(&self, file_system: &str) -> PathBuf {
        self.dir.path().join("efs").join(file_system)
    }

    /// The bodies of the captured calls of one action (for parameters moto drops).
    pub fn bodies(&self, action: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("capture.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["action"] == action)
            .filter_map(|v| serde_json::from_str(v["body"].as_str().unwrap_or_default()).ok())
            .collect()
    }
}

pub struct Clients {
    pub acm: aws_sdk_acm::Client,
    pub scaling: aws_sdk_applicationautoscaling::Client,
    pub backup: aws_sdk_backup::Client,
    pub cloudtrail: aws_sdk_cloudtrail::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub efs: aws_sdk_efs::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub iam: aws_sdk_iam::Client,
    pub kms: aws_sdk_kms::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub rds: aws_sdk_rds::Client,
    pub route53: aws_sdk_route53::Client,
    pub s3: aws_sdk_s3::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sts: aws_sdk_sts::Client,
    pub waf: aws_sdk_wafv2::Client,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A working directory for the tool (its ./state lives there) pointed at an endpoint.
pub struct Tool {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    /// A shared state every run is given (GITLAB_PROVISION_STATE), as a team's would be.
    pub state_url: Option<String>,
}

impl Tool {
    pub fn new(endpoint: &str) -> Tool {
        let dir = tempfile::tempdir().expect("temp dir");
        // Empty AWS config files: tests must never pick up a developer's real profile.
        std::fs::write(dir.path().join("aws-config"), "").expect("aws config");
        Tool { dir, endpoint: endpoint.to_string(), state_url: None }
    }

    /// A tool whose runs keep the state at `url` (s3://BUCKET/PREFIX).
    pub fn sharing(endpoint: &str, url: &str) -> Tool {
        Tool { state_url: Some(url.to_string()), ..Tool::new(endpoint) }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitlab-provision"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.dir.path().join("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.path().join("aws-config"))
            .stdin(Stdio::null());
        if let Some(url) = &self.state_url {
            cmd.env("GITLAB_PROVISION_STATE", url);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("run gitlab-provision");
        Run::from(output)
    }

    /// Runs it with these environment variables changed (`None` removes one).
    pub fn run_with(&self, args: &[&str], env: &[(&str, Option<&str>)]) -> Run {
        let mut command = self.command(args);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        Run::from(command.output().expect("run gitlab-provision"))
    }

    pub fn write(&self, name: &str, text: &str) {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let mut f = std::fs::File::create(path).expect("create file");
        f.write_all(text.as_bytes()).expect("write file");
    }

    pub fn state_path(&self, stack: &str) -> PathBuf {
        self.dir.path().join("state").join(format!("{stack}.json"))
    }

    pub fn state(&self, stack: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.state_path(stack)).ok()?;
        Some(serde_json::from_str(&text).expect("state is JSON"))
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn fails_with(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "expected exit {code}\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Everything in the emulator tagged with the stack, by type (alive only: a deleted NAT
/// gateway or terminated instance does not count).
pub async fn tagged_leftovers(ec2: &aws_sdk_ec2::Client, stack: &str) -> Vec<String> {
    use aws_sdk_ec2::types::Filter;
    let f = || Filter::builder().name("tag:gitlab-provision:stack").values(stack).build();
    let mut left = Vec::new();
    for v in ec2.describe_vpcs().filters(f()).send().await.unwrap().vpcs() {
        left.push(format!("vpc {}", v.vpc_id().unwrap_or_default()));
    }
    for s in ec2.describe_subnets().filters(f()).send().await.unwrap().subnets() {
        left.push(format!("subnet {}", s.subnet_id().unwrap_or_default()));
    }
    for g in ec2.describe_internet_gateways().filters(f()).send().await.unwrap().internet_gateways() {
        left.push(format!("igw {}", g.internet_gateway_id().unwrap_or_default()));
    }
    for t in ec2.describe_route_tables().filters(f()).send().await.unwrap().route_tables() {
        left.push(format!("route table {}", t.route_table_id().unwrap_or_default()));
    }
    for a in ec2.describe_addresses().filters(f()).send().await.unwrap().addresses() {
        left.push(format!("eip {}", a.allocation_id().unwrap_or_default()));
    }
    // The emulator ignores tag filters on NAT gateways: check the tags here.
    for n in ec2.describe_nat_gateways().filter(f()).send().await.unwrap().nat_gateways() {
        let tagged = n.tags().iter().any(|t| t.key() == Some("gitlab-provision:stack") && t.value() == Some(stack));
        if tagged && n.state().map(|s| s.as_str()) != Some("deleted") {
            left.push(format!("nat {}", n.nat_gateway_id().unwrap_or_default()));
        }
    }
    for g in ec2.describe_security_groups().filters(f()).send().await.unwrap().security_groups() {
        left.push(format!("sg {}", g.group_id().unwrap_or_default()));
    }
    for r in ec2.describe_instances().filters(f()).send().await.unwrap().reservations() {
        for i in r.instances() {
            if i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated") {
                left.push(format!("instance {}", i.instance_id().unwrap_or_default()));
            }
        }
    }
    left
}

/// Everything of the stack left in the emulator, kind by kind: every kind the tool records has
/// its arm here (the match is exhaustive, so a new kind cannot be forgotten by the tests).
pub async fn stack_leftovers(c: &Clients, stack: &str) -> Vec<String> {
    let mut left = Vec::new();
    for kind in Kind::ALL {
        left.extend(leftovers_of(c, *kind, stack).await);
    }
    left
}

fn tagged_efs(tags: &[aws_sdk_efs::types::Tag], stack: &str) -> bool {
    tags.iter().any(|t| t.key() == "gitlab-provision:stack" && t.value() == stack)
}

/// What is left of one kind: by tag where the service lists tags, else by the names the tool
/// gives (roles, log groups, secrets, functions, clusters, task definitions).
async fn leftovers_of(c: &Clients, kind: Kind, stack: &str) -> Vec<String> {
    let mut left = Vec::new();
    match kind {
        // EC2 lists by tag.
        Kind::Vpc
        | Kind::Subnet
        | Kind::InternetGateway
        | Kind::RouteTable
        | Kind::ElasticIp
        | Kind::NatGateway
        | Kind::Instance
        | Kind::SecurityGroup => {
            let noun = match kind {
                Kind::Vpc => "vpc",
                Kind::Subnet => "subnet",
                Kind::InternetGateway => "igw",
                Kind::RouteTable => "route table",
                Kind::ElasticIp => "eip",
                Kind::NatGateway => "nat",
                Kind::Instance => "instance",
                _ => "sg",
            };
            left.extend(
                tagged_leftovers(&c.ec2, stack)
                    .await
                    .into_iter()
                    .filter(|l| l.rsplit_once(' ').is_some_and(|(k, _)| k == noun)),
            );
        }
        Kind::FileSystem => {
            for fs in c.efs.describe_file_systems().send().await.unwrap().file_systems() {
                if tagged_efs(fs.tags(), stack) {
                    left.push(format!("file system {}", fs.file_system_id()));
                }
            }
        }
        Kind::MountTarget | Kind::AccessPoint => {
            for fs in c.efs.describe_file_systems().send().await.unwrap().file_systems() {
                let id = fs.file_system_id();
                if kind == Kind::MountTarget && tagged_efs(fs.tags(), stack) {
                    let mts = c.efs.describe_mount_targets().file_system_id(id).send().await.unwrap();
                    left.extend(mts.mount_targets().iter().map(|m| format!("mount target {}", m.mount_target_id())));
                }
                if kind == Kind::AccessPoint {
                    let points = c.efs.describe_access_points().file_system_id(id).send().await.unwrap();
                    for ap in points.access_points() {
                        if tagged_efs(ap.tags(), stack) {
                            left.push(format!("access point {}", ap.access_point_id().unwrap_or_default()));
                        }
                    }
                }
            }
        }
        Kind::LoadBalancer => {
            for lb in c.elb.describe_load_balancers().send().await.unwrap().load_balancers() {
                if lb.load_balancer_name().is_some_and(|n| n == stack || n == format!("{stack}-ssh")) {
                    left.push(format!("load balancer {}", lb.load_balancer_name().unwrap_or_default()));
                }
            }
        }
        Kind::TargetGroup => {
            for tg in c.elb.describe_target_groups().send().await.unwrap().target_groups() {
                if tg.target_group_name().is_some_and(|n| n.starts_with(stack)) {
                    left.push(format!("target group {}", tg.target_group_name().unwrap()));
                }
            }
        }
        // A listener lives and dies with its load balancer.
        Kind::Listener => {}
        Kind::Cluster => {
            for cl in c.ecs.describe_clusters().clusters(stack).send().await.unwrap().clusters() {
                if cl.status() == Some("ACTIVE") {
                    left.push(format!("cluster {stack}"));
                }
            }
        }
        // A service lives and dies with its cluster.
        Kind::Service => {}
        Kind::TaskDefinition => {
            use aws_sdk_ecs::types::TaskDefinitionStatus::{Active, Inactive};
            for status in [Active, Inactive] {
                let family = format!("{stack}-gitlab");
                let out = c.ecs.list_task_definitions().family_prefix(family).status(status).send().await.unwrap();
                left.extend(out.task_definition_arns().iter().map(|arn| format!("task definition {arn}")));
            }
        }
        Kind::Role => {
            for role in c.iam.list_roles().send().await.unwrap().roles() {
                if role.role_name().starts_with(&format!("{stack}-")) {
                    left.push(format!("role {}", role.role_name()));
                }
            }
        }
        // An inline policy lives and dies with its role.
        Kind::RolePolicy => {}
        // GitLab's own, and the two AWS would create for the stack's function and cluster.
        Kind::LogGroup => {
            for prefix in [
                format!("/gitlab-provision/{stack}/"),
                format!("/aws/lambda/{stack}-efs-init"),
                format!("/aws/ecs/containerinsights/{stack}/"),
            ] {
                for g in c.logs.describe_log_groups().log_group_name_prefix(&prefix).send().await.unwrap().log_groups()
                {
                    left.push(format!("log group {}", g.log_group_name().unwrap_or_default()));
                }
            }
        }
        Kind::BackupVault => {
            for vault in c.backup.list_backup_vaults().send().await.unwrap().backup_vault_list() {
                if vault.backup_vault_name() == Some(format!("gitlab-provision-{stack}").as_str()) {
                    left.push(format!("backup vault {}", vault.backup_vault_name().unwrap_or_default()));
                }
            }
        }
        Kind::Secret => {
            for s in c.secrets.list_secrets().send().await.unwrap().secret_list() {
                let ours = s.name().is_some_and(|n| n.starts_with(&format!("gitlab-provision/{stack}/")));
                if ours && s.deleted_date().is_none() {
                    left.push(format!("secret {}", s.name().unwrap()));
                }
            }
        }
        Kind::Function => {
            for f in c.lambda.list_functions().send().await.unwrap().functions() {
                if f.function_name().is_some_and(|n| n.starts_with(&format!("{stack}-"))) {
                    left.push(format!("function {}", f.function_name().unwrap()));
                }
            }
        }
        Kind::Certificate => {
            for cert in c.acm.list_certificates().send().await.unwrap().certificate_summary_list() {
                let arn = cert.certificate_arn().unwrap();
                let tags = c.acm.list_tags_for_certificate().certificate_arn(arn).send().await.unwrap();
                if tags.tags().iter().any(|t| t.key() == "gitlab-provision:stack" && t.value() == Some(stack)) {
                    left.push(format!("certificate {arn}"));
                }
            }
        }
        // The tool's records in the tests' zones: anything but the zone's own NS and SOA.
        Kind::DnsRecord => {
            for zone in c.route53.list_hosted_zones().send().await.unwrap().hosted_zones() {
                let sets = c.route53.list_resource_record_sets().hosted_zone_id(zone.id()).send().await.unwrap();
                for set in sets.resource_record_sets() {
                    use aws_sdk_route53::types::RrType;
                    if !matches!(set.r#type(), RrType::Ns | RrType::Soa) {
                        left.push(format!("DNS record {} {}", set.name(), set.r#type().as_str()));
                    }
                }
            }
        }
        // "The file system is prepared": nothing in AWS.
        Kind::Marker => {}
        // A resource policy lives and dies with its secret, file system or vault; so does a lock.
        Kind::SecretPolicy | Kind::FileSystemPolicy | Kind::VaultPolicy | Kind::VaultLock => {}
        Kind::FlowLog => {
            for flow in c.ec2.describe_flow_logs().send().await.unwrap().flow_logs() {
                if flow.tags().iter().any(|t| t.key() == Some("gitlab-provision:stack") && t.value() == Some(stack)) {
                    left.push(format!("flow log {}", flow.flow_log_id().unwrap_or_default()));
                }
            }
        }
        Kind::NetworkAcl => {
            let f = aws_sdk_ec2::types::Filter::builder().name("tag:gitlab-provision:stack").values(stack).build();
            for acl in c.ec2.describe_network_acls().filters(f).send().await.unwrap().network_acls() {
                left.push(format!("network ACL {}", acl.network_acl_id().unwrap_or_default()));
            }
        }
        // A key whose deletion is scheduled is gone as far as anything can use it.
        Kind::Key => {
            for alias in c.kms.list_aliases().send().await.unwrap().aliases() {
                if alias.alias_name() == Some(format!("alias/gitlab-provision/{stack}").as_str()) {
                    left.push(format!("KMS alias {}", alias.alias_name().unwrap_or_default()));
                }
            }
            for key in c.kms.list_keys().send().await.unwrap().keys() {
                let id = key.key_id().unwrap_or_default();
                let meta = c.kms.describe_key().key_id(id).send().await.unwrap();
                let state = meta.key_metadata().and_then(|m| m.key_state()).map(|s| s.as_str().to_string());
                let tags = c.kms.list_resource_tags().key_id(id).send().await.unwrap();
                let ours =
                    tags.tags().iter().any(|t| t.tag_key() == "gitlab-provision:stack" && t.tag_value() == stack);
                if ours && state.as_deref() != Some("PendingDeletion") {
                    left.push(format!("KMS key {id}"));
                }
            }
        }
        Kind::Bucket => {
            for bucket in c.s3.list_buckets().send().await.unwrap().buckets() {
                if bucket.name().is_some_and(|n| n.starts_with(&format!("{stack}-"))) {
                    left.push(format!("bucket {}", bucket.name().unwrap_or_default()));
                }
            }
        }
        // Application Auto Scaling lists by the service's resource id (the cluster is the stack's name).
        Kind::ScalableTarget | Kind::ScheduledAction | Kind::ScalingPolicy => {
            use aws_sdk_applicationautoscaling::types::ServiceNamespace;
            let resource = format!("service/{stack}/gitlab");
            let found: Vec<String> = match kind {
                Kind::ScalableTarget => {
                    let out = c.scaling.describe_scalable_targets().service_namespace(ServiceNamespace::Ecs);
                    let out = out.resource_ids(&resource).send().await.unwrap();
                    out.scalable_targets().iter().map(|t| format!("scalable target {}", t.resource_id())).collect()
                }
                Kind::ScheduledAction => {
                    let out = c.scaling.describe_scheduled_actions().service_namespace(ServiceNamespace::Ecs);
                    let out = out.resource_id(&resource).send().await.unwrap();
                    out.scheduled_actions()
                        .iter()
                        .map(|a| format!("scheduled action {}", a.scheduled_action_name()))
                        .collect()
                }
                _ => {
                    let out = c.scaling.describe_scaling_policies().service_namespace(ServiceNamespace::Ecs);
                    let out = out.resource_id(&resource).send().await.unwrap();
                    out.scaling_policies().iter().map(|p| format!("scaling policy {}", p.policy_name())).collect()
                }
            };
            left.extend(found);
        }
        Kind::Alarm => {
            let out = c.cloudwatch.describe_alarms().alarm_name_prefix(format!("{stack}-")).send().await.unwrap();
            for alarm in out.metric_alarms() {
                left.push(format!("alarm {}", alarm.alarm_name().unwrap_or_default()));
            }
        }
        // RDS: the instance by its tags, the subnet group by the name the tool gives it.
        Kind::DbInstance => {
            for db in c.rds.describe_db_instances().send().await.unwrap().db_instances() {
                if db.tag_list().iter().any(|t| t.key() == Some("gitlab-provision:stack") && t.value() == Some(stack)) {
                    left.push(format!("database instance {}", db.db_instance_identifier().unwrap_or_default()));
                }
            }
        }
        Kind::DbSubnetGroup => {
            for group in c.rds.describe_db_subnet_groups().send().await.unwrap().db_subnet_groups() {
                if group.db_subnet_group_name() == Some(format!("{stack}-gitlab").as_str()) {
                    left.push(format!("DB subnet group {}", group.db_subnet_group_name().unwrap_or_default()));
                }
            }
        }
        Kind::WebAcl => {
            let acls = c.waf.list_web_acls().scope(aws_sdk_wafv2::types::Scope::Regional).send().await.unwrap();
            for acl in acls.web_acls() {
                if acl.name().is_some_and(|n| n.starts_with(&format!("{stack}-"))) {
                    left.push(format!("web ACL {}", acl.name().unwrap_or_default()));
                }
            }
        }
    }
    left
}

/// How many live resources of each kind carry the stack tag (to catch twins).
pub async fn count_tagged(ec2: &aws_sdk_ec2::Client, stack: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for item in tagged_leftovers(ec2, stack).await {
        let kind = item.rsplit_once(' ').map(|(k, _)| k.to_string()).unwrap_or(item);
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

/// Builds a VPC the way a user's existing one might look: two public subnets routed to an
/// internet gateway, two private ones routed to a NAT gateway (optional), distinct zones.
pub async fn existing_vpc(ec2: &aws_sdk_ec2::Client, with_nat: bool) -> (String, Vec<String>) {
    let vpc =
        ec2.create_vpc().cidr_block("172.31.0.0/16").send().await.unwrap().vpc().unwrap().vpc_id().unwrap().to_string();
    // Fargate mounts EFS by DNS name: a VPC GitLab can run in has DNS support and hostnames on.
    for hostnames in [false, true] {
        let on = aws_sdk_ec2::types::AttributeBooleanValue::builder().value(true).build();
        let request = ec2.modify_vpc_attribute().vpc_id(&vpc);
        let request = if hostnames { request.enable_dns_hostnames(on) } else { request.enable_dns_support(on) };
        request.send().await.unwrap();
    }
    let igw = ec2
        .create_internet_gateway()
        .send()
        .await
        .unwrap()
        .internet_gateway()
        .unwrap()
        .internet_gateway_id()
        .unwrap()
        .to_string();
    ec2.attach_internet_gateway().internet_gateway_id(&igw).vpc_id(&vpc).send().await.unwrap();
    let mut subnets = Vec::new();
    for (cidr, az) in [
        ("172.31.0.0/20", "us-east-1a"),
        ("172.31.16.0/20", "us-east-1b"),
        ("172.31.32.0/20", "us-east-1a"),
        ("172.31.48.0/20", "us-east-1b"),
    ] {
        let s = ec2.create_subnet().vpc_id(&vpc).cidr_block(cidr).availability_zone(az).send().await.unwrap();
        subnets.push(s.subnet().unwrap().subnet_id().unwrap().to_string());
    }
    let public_rt = ec2
        .create_route_table()
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .route_table()
        .unwrap()
        .route_table_id()
        .unwrap()
        .to_string();
    ec2.create_route()
        .route_table_id(&public_rt)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&igw)
        .send()
        .await
        .unwrap();
    let private_rt = ec2
        .create_route_table()
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .route_table()
        .unwrap()
        .route_table_id()
        .unwrap()
        .to_string();
    if with_nat {
        let eip = ec2
            .allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .send()
            .await
            .unwrap()
            .allocation_id()
            .unwrap()
            .to_string();
        let nat = ec2
            .create_nat_gateway()
            .subnet_id(&subnets[0])
            .allocation_id(eip)
            .send()
            .await
            .unwrap()
            .nat_gateway()
            .unwrap()
            .nat_gateway_id()
            .unwrap()
            .to_string();
        ec2.create_route()
            .route_table_id(&private_rt)
            .destination_cidr_block("0.0.0.0/0")
            .nat_gateway_id(nat)
            .send()
            .await
            .unwrap();
    }
    for (i, s) in subnets.iter().enumerate() {
        let rt = if i < 2 { &public_rt } else { &private_rt };
        ec2.associate_route_table().route_table_id(rt).subnet_id(s).send().await.unwrap();
    }
    (vpc, subnets)
}

/// The last task definition the tool registered, as it sent it.
pub fn last_registered(emu: &Emulator) -> Value {
    emu.bodies("RegisterTaskDefinition").pop().expect("a task definition was registered")
}

/// GitLab's omnibus configuration (GITLAB_OMNIBUS_CONFIG) in a registered task definition.
pub fn omnibus(td: &Value) -> String {
    td["containerDefinitions"][0]["environment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "GITLAB_OMNIBUS_CONFIG")
        .map(|e| e["value"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The one allowed network every test stack uses.
pub const CIDRS: [&str; 2] = ["--allowed-cidr", "203.0.113.0/24"];

/// `up --stack STACK --allowed-cidr ... EXTRA...`
pub fn up<'a>(stack: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["up", "--stack", stack];
    args.extend(CIDRS);
    args.extend(extra);
    args
}

/// Validates JSON output against schemas/<schema>.schema.json (one document, or one per line).
pub fn validate_json(schema: &str, output: &str, lines: bool) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), output).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/validate_json.py");
    let mut command = Command::new(python());
    command.arg(script).arg(schema).arg(file.path());
    if lines {
        command.arg("--lines");
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{schema}: {}{}\n{output}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
