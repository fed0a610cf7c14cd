//! The one typed configuration: TOML file + command-line flags -> a validated [`StackConfig`].
//!
//! Every check that does not need AWS happens here, before any call is made, and every
//! problem is reported at once with the key, what is wrong and how to fix it.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

pub const DEFAULT_CONFIG_FILE: &str = "gitlab-provision.toml";
pub const DEFAULT_STACK: &str = "gitlab";
pub const DEFAULT_VPC_CIDR: &str = "10.0.0.0/16";
pub const DEFAULT_ROOT_EMAIL: &str = "admin@example.com";
/// Docker Hub's image; an ECR mirror or pull-through cache avoids Docker Hub's pull limit.
pub const DEFAULT_GITLAB_IMAGE: &str = "gitlab/gitlab-ce";
/// Pinned on purpose: `latest` can jump a major version on any task restart, and GitLab
/// only supports upgrades along its documented upgrade path.
pub const DEFAULT_GITLAB_IMAGE_TAG: &str = "19.4.1-ce.0";
pub const DEFAULT_TASK_CPU: u32 = 2048;
pub const DEFAULT_TASK_MEMORY_MIB: u32 = 6144;
pub const DEFAULT_SSH_PORT: u16 = 22;
/// GitLab's own minimum; below it Puma and Sidekiq are OOM-killed during first boot.
const GITLAB_MIN_MEMORY_MIB: u32 = 4096;
/// A security group's default quota of inbound rules.
const SECURITY_GROUP_RULES: usize = 60;

/// Every configurable key. The same struct is the TOML schema and the command-line flags
/// of `up` and `plan`, so a key and its flag cannot drift apart.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Stack name (global flag --stack)
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// AWS region (global flag --region)
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where the team keeps the stack's state: s3://BUCKET/PREFIX (global flag --state-url,
    /// environment GITLAB_PROVISION_STATE) [default: the local --state-dir]
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// IPv4 CIDR allowed to reach GitLab; repeat for several (config: allowed_cidrs)
    #[arg(long = "allowed-cidr", value_name = "CIDR", help_heading = "Network")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    /// CIDR of the VPC to create [default: 10.0.0.0/16]
    #[arg(long, value_name = "CIDR", help_heading = "Network")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_cidr: Option<String>,
    /// Use a t4g.nano NAT instance instead of a NAT gateway (the same as egress = "nat-instance")
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Network")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_nat_instance: Option<bool>,
    /// How GitLab reaches the internet: nat-instance (a t4g.nano), nat-gateway, or public-ip (no
    /// NAT: GitLab's task gets a public address, its security group admits only the load
    /// balancers) [default: nat-instance for a new stack; an existing stack keeps its own]
    #[arg(long, value_name = "EGRESS", help_heading = "Network")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    /// Use this existing VPC instead of creating one
    #[arg(long, value_name = "VPC_ID", help_heading = "Network")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// The two availability zones of a new VPC, e.g. us-east-1a (repeat; config: availability_zones)
    #[arg(long = "availability-zone", value_name = "ZONE", help_heading = "Network")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zones: Option<Vec<String>>,
    /// Domain for HTTPS (with --sub-domain and --hosted-zone-id)
    #[arg(long, value_name = "DOMAIN", help_heading = "HTTPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    /// Host name under the domain, e.g. gitlab
    #[arg(long, value_name = "NAME", help_heading = "HTTPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_domain: Option<String>,
    /// Route 53 hosted zone of the domain (Z..., with or without /hostedzone/)
    #[arg(long, value_name = "ZONE_ID", help_heading = "HTTPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosted_zone_id: Option<String>,
    /// E-mail of GitLab's root user [default: admin@example.com]
    #[arg(long, value_name = "EMAIL", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_root_email: Option<String>,
    /// Image repository, e.g. an ECR mirror [default: gitlab/gitlab-ce]
    #[arg(long, value_name = "REPOSITORY", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_image: Option<String>,
    /// gitlab-ce release tag, e.g. 19.4.1-ce.0 [default: what runs, else 19.4.1-ce.0]
    #[arg(long, value_name = "TAG", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_image_tag: Option<String>,
    /// ARN of a Secrets Manager secret with the registry's username and password
    #[arg(long, value_name = "SECRET_ARN", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_image_credentials: Option<String>,
    /// Fargate task CPU units [default: 2048]
    #[arg(long, value_name = "UNITS", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cpu: Option<u32>,
    /// Fargate task memory in MiB [default: 6144]
    #[arg(long, value_name = "MIB", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_memory_mib: Option<u32>,
    /// Serve Git over SSH through a network load balancer
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Git over SSH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<bool>,
    /// The SSH port developers connect to [default: 22]
    #[arg(long, value_name = "PORT", help_heading = "Git over SSH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// IAM role or user ARN allowed, beside whoever created the stack, to read the root password and
    /// delete backups (repeat; config: admin_principals)
    #[arg(long = "admin-principal", value_name = "ARN", help_heading = "Security")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_principals: Option<Vec<String>>,
    /// Security profile: default, or strict for an audit (adds flow logs, load-balancer access
    /// logs, a WAF, a vault lock, network ACLs that let out only what GitLab uses) [default: default]
    #[arg(long, value_name = "PROFILE", help_heading = "Security")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardening: Option<Hardening>,
    /// GitLab's CPU architecture: arm64 (Graviton, 20% cheaper) or x86_64 [default: arm64 where
    /// GitLab ships an official arm64 image (18.2 on), else x86_64]
    #[arg(long, value_name = "ARCH", help_heading = "Cost")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_architecture: Option<Architecture>,
    /// on-demand, or spot (Fargate Spot: about 70% less; stopped with two minutes' notice when
    /// AWS needs the capacity; x86_64 only) [default: on-demand]
    #[arg(long, value_name = "CAPACITY", help_heading = "Cost")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Office hours: GitLab sleeps outside them, e.g. "Mon-Fri 07:30-19:30 Europe/Berlin"
    /// (config: the same line, or schedule = { days = "Mon-Fri", start = "07:30", stop = "19:30", timezone = "Europe/Berlin" })
    #[arg(long, value_name = "DAYS HH:MM-HH:MM ZONE", value_parser = crate::schedule::parse_flag, help_heading = "Cost")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduleSetting>,
    /// Put GitLab to sleep after this long without a request, e.g. 2h; the next request wakes it
    /// (15m to 24h)
    #[arg(long, value_name = "DURATION", help_heading = "Cost")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_sleep: Option<String>,
    /// Move files nobody read for this long to EFS Infrequent Access, e.g. 30d (1d, 7d, 14d, 30d,
    /// 60d, 90d, 180d, 270d or 365d) [default: off]
    #[arg(long, value_name = "DAYS", help_heading = "Cost")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub efs_infrequent_access_after: Option<String>,
    /// Allow shells in GitLab's container (`exec`, `shell`), each session logged [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<bool>,
    /// Keep GitLab's artifacts, LFS objects, uploads, packages and the other object types in S3
    /// buckets of the stack's instead of on EFS [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "GitLab")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_storage: Option<bool>,
    /// Where GitLab's PostgreSQL runs: bundled (in GitLab's container, its files on EFS) or rds
    /// (an RDS instance of the stack's) [default: bundled]
    #[arg(long, value_name = "WHERE", help_heading = "Database")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<Database>,
    /// The RDS instance class [default: db.t4g.medium]
    #[arg(long, value_name = "CLASS", help_heading = "Database")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_instance_class: Option<String>,
    /// The RDS instance's storage in GiB, gp3 (20 to 65536; it only grows) [default: 20]
    #[arg(long, value_name = "GIB", help_heading = "Database")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_storage_gb: Option<u32>,
    /// A standby in a second zone (twice the instance's price) [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Database")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_multi_az: Option<bool>,
    /// Days RDS keeps its automated backups (1 to 35) [default: 7]
    #[arg(long, value_name = "DAYS", help_heading = "Database")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_backup_retention_days: Option<u32>,
}

impl Settings {
    /// Values in `over` win; the rest come from `self`. Field by field through their serialized
    /// form, so a new key needs no line here.
    pub fn overlay(self, over: Settings) -> Settings {
        let fields = |settings: &Settings| match serde_json::to_value(settings) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        let mut merged = fields(&self);
        merged.extend(fields(&over).into_iter().filter(|(_, v)| !v.is_null()));
        serde_json::from_value(serde_json::Value::Object(merged)).unwrap_or(over)
    }

    /// Every key the file accepts, from the type itself (for "did you mean" and the README test).
    pub fn keys() -> Vec<String> {
        let schema = schemars::schema_for!(Settings);
        schema.get("properties").and_then(|p| p.as_object()).map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub problem: String,
    pub help: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}\n    help: {}", self.key, self.problem, self.help)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String, help: String },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Invalid>),
}

impl ground::Help for ConfigError {
    fn help(&self) -> Option<String> {
        match self {
            ConfigError::Missing(_) => Some(format!(
                "create it (`gitlab-provision init`), or drop --config to use ./{DEFAULT_CONFIG_FILE} or flags only"
            )),
            ConfigError::Parse { help, .. } => Some(help.clone()),
            // Each invalid key carries its own help in the list.
            ConfigError::Read { .. } | ConfigError::Invalid(_) => None,
        }
    }
}

fn list(problems: &[Invalid]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

/// Reads the config file: the explicit one (which must exist) or `./gitlab-provision.toml` if present.
pub fn load_file(explicit: Option<&Path>) -> Result<Settings, ConfigError> {
    let path = match explicit {
        Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_path_buf())),
        Some(p) => p.to_path_buf(),
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG_FILE);
            if !default.exists() {
                return Ok(Settings::default());
            }
            default
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    parse_toml(&text).map_err(|(message, help)| ConfigError::Parse { path, message, help })
}

/// Parses the file. Every unknown key is reported at once, each with the nearest known one
/// (serde alone stops at the first); other mistakes carry serde's own words.
pub fn parse_toml(text: &str) -> Result<Settings, (String, String)> {
    const WHERE: &str =
        "keys are listed in the README under \"Configuration\"; `gitlab-provision init` writes a commented file";
    let table: toml::Table =
        toml::from_str(text).map_err(|e| (e.to_string().trim_end().to_string(), WHERE.to_string()))?;
    let keys = Settings::keys();
    let known: Vec<&str> = keys.iter().map(String::as_str).collect();
    let unknown: Vec<&String> = table.keys().filter(|k| !known.contains(&k.as_str())).collect();
    if !unknown.is_empty() {
        let noun = if unknown.len() == 1 { "key" } else { "keys" };
        let listed = unknown.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let near: Vec<String> = unknown
            .iter()
            .filter_map(|k| did_you_mean(k, &known).map(|near| (k, near)))
            .map(|(k, near)| if unknown.len() == 1 { format!("`{near}`") } else { format!("`{near}` for `{k}`") })
            .collect();
        let help = if near.is_empty() {
            WHERE.to_string()
        } else {
            format!("did you mean {}? (keys are listed in the README under \"Configuration\")", near.join(", "))
        };
        return Err((format!("unknown {noun} {listed}"), help));
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| (e.to_string().trim_end().to_string(), WHERE.to_string()))
}

/// The known word closest to `word`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Where GitLab's PostgreSQL runs.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Database {
    /// GitLab's own PostgreSQL in its container, its files on EFS: the cheapest.
    #[default]
    Bundled,
    /// An RDS PostgreSQL instance of the stack's: what GitLab's documentation recommends.
    Rds,
}

/// The settings of `database = "rds"`, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    pub instance_class: String,
    pub storage_gb: u32,
    pub multi_az: bool,
    pub backup_retention_days: u32,
}

/// The RDS class when the configuration names none: 2 vCPUs and 4 GiB, Graviton, burstable.
/// GitLab's 20 RPS / 1,000-user reference architecture runs its whole application (PostgreSQL
/// included) on 8 vCPUs and 16 GB; its smallest one with a separate PostgreSQL (40 RPS / 2,000
/// users) gives PostgreSQL 2 vCPUs and 8 GB. A small team is a fraction of either: 4 GiB holds
/// its database's working set, and `db_instance_class` grows it in place.
pub const DEFAULT_DB_INSTANCE_CLASS: &str = "db.t4g.medium";
pub const DEFAULT_DB_STORAGE_GB: u32 = 20;
pub const DEFAULT_DB_BACKUP_RETENTION_DAYS: u32 = 7;

/// How far the stack goes beyond the defaults for a security audit.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Hardening {
    /// The secret, the file system and the backups guarded; no public IPs by default; deletion
    /// protection; a scoped backup role; a customer-managed KMS key for the log groups and the
    /// secret; 365-day logs; network ACLs per subnet tier. What every stack gets.
    #[default]
    Default,
    /// Also: VPC flow logs and load-balancer access logs to a bucket of the stack's, an AWS WAF
    /// web ACL on the load balancer, a vault lock, and network ACLs that let out only the ports
    /// GitLab uses.
    Strict,
}

/// How GitLab's task reaches the internet from a VPC the tool creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    /// AWS's managed NAT gateway (about $33/month).
    NatGateway,
    /// A t4g.nano NAT instance (about $4/month; one instance, patched by its AMI's updates).
    NatInstance,
    /// No NAT: the task runs in the public subnets with a public address.
    PublicIp,
}

/// GitLab's CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    #[value(name = "x86_64")]
    X86_64,
    Arm64,
}

impl Architecture {
    /// ECS's name (`runtimePlatform.cpuArchitecture`).
    pub fn ecs(self) -> &'static str {
        match self {
            Architecture::X86_64 => "X86_64",
            Architecture::Arm64 => "ARM64",
        }
    }
}

/// Fargate's capacity: on-demand, or Spot.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capacity {
    #[default]
    OnDemand,
    Spot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkConfig {
    Create { vpc_cidr: Ipv4Net, egress: Egress, zones: Option<[String; 2]> },
    Import { vpc_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    pub domain_name: String,
    pub sub_domain: String,
    pub hosted_zone_id: String,
}

impl DomainConfig {
    /// GitLab's name: `<sub_domain>.<domain_name>`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}", self.sub_domain, self.domain_name)
    }
}

/// Where the image tag to deploy came from (a flag that differs from the file is called out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagSource {
    Flag,
    File,
    /// Neither says: the version that runs is kept.
    Running,
    /// Neither says and nothing runs yet.
    Default,
}

/// A configuration that passed every static check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    pub stack: String,
    pub region: Option<String>,
    pub allowed_cidrs: Vec<Ipv4Net>,
    pub network: NetworkConfig,
    pub domain: Option<DomainConfig>,
    pub gitlab_root_email: String,
    pub gitlab_image: String,
    pub gitlab_image_tag: String,
    pub tag_source: TagSource,
    pub gitlab_image_credentials: Option<String>,
    pub task_cpu: u32,
    pub task_memory_mib: u32,
    /// The SSH port, when Git over SSH is on.
    pub ssh_port: Option<u16>,
    /// ECS Exec (`exec`, `shell`) on the service, its sessions logged.
    pub exec: bool,
    /// GitLab's objects in the stack's S3 buckets (consolidated object storage).
    pub object_storage: bool,
    /// Whether the configuration named `object_storage` (else a stack that has it keeps it).
    pub object_storage_chosen: bool,
    /// GitLab's PostgreSQL on RDS, with these settings (`None`: the bundled one).
    pub database: Option<DatabaseSettings>,
    /// Whether the configuration named `database` (else a stack on RDS stays on it).
    pub database_chosen: bool,
    pub hardening: Hardening,
    /// Whether the configuration named the egress (else an existing stack keeps its own).
    pub egress_chosen: bool,
    /// The architecture asked for; `None`: decided from the image (see [`StackConfig::architecture`]).
    pub cpu_architecture: Option<Architecture>,
    pub capacity: Capacity,
    pub schedule: Option<crate::schedule::OfficeHours>,
    /// Minutes without a request before GitLab sleeps (a multiple of 5).
    pub idle_sleep_minutes: Option<u32>,
    /// Days without a read before a file moves to EFS Infrequent Access.
    pub efs_ia_days: Option<u32>,
    /// Put to sleep by `sleep` (the state's note; set by `up` and `plan`, not the configuration).
    pub asleep: bool,
    /// Who, beside the operator, may read the root secret and delete backups (IAM ARNs).
    pub admin_principals: Vec<String>,
    /// The principal that created the stack (its IAM role or user ARN), recorded at its first
    /// `up`: never locked out of what the resource policies guard. Set by `up` and `plan` from
    /// the state, not by the configuration.
    pub operator: Option<String>,
}

impl StackConfig {
    /// The image reference the task runs.
    pub fn image(&self) -> String {
        format!("{}:{}", self.gitlab_image, self.gitlab_image_tag)
    }

    /// The task's architecture, and why it is x86_64 when nobody asked: arm64 where GitLab
    /// ships an official arm64 image of this version, never on Spot.
    pub fn architecture(&self) -> (Architecture, Option<String>) {
        if let Some(asked) = self.cpu_architecture {
            return (asked, None);
        }
        if self.capacity == Capacity::Spot {
            return (Architecture::X86_64, Some("Fargate Spot runs x86_64 only".into()));
        }
        let Some(version) = crate::gitlab_version::Version::parse(&self.gitlab_image_tag) else {
            return (Architecture::X86_64, Some(format!("{} is not a release tag", self.gitlab_image_tag)));
        };
        match crate::requirements::arm64(&self.gitlab_image, version) {
            Ok(()) => (Architecture::Arm64, None),
            Err(why) => (Architecture::X86_64, Some(format!("{why}; set cpu_architecture = \"arm64\" if it has one"))),
        }
    }

    /// The egress of a VPC the tool creates (`None` for an imported VPC).
    pub fn egress(&self) -> Option<Egress> {
        match self.network {
            NetworkConfig::Create { egress, .. } => Some(egress),
            NetworkConfig::Import { .. } => None,
        }
    }

    pub fn strict(&self) -> bool {
        self.hardening == Hardening::Strict
    }

    /// Whether the image is pulled from ECR (the execution role then needs ECR's pull rights).
    pub fn image_in_ecr(&self) -> bool {
        self.gitlab_image
            .split('/')
            .next()
            .is_some_and(|host| host.contains(".dkr.ecr.") && host.contains(".amazonaws.com"))
    }

    /// What a careful reader should know about exposure, said by `plan` and `up`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for cidr in &self.allowed_cidrs {
            if cidr.prefix_len() <= 8 {
                let reach = if cidr.prefix_len() == 0 {
                    "the whole internet".to_string()
                } else {
                    format!("{} addresses", 1u64 << (32 - cidr.prefix_len()))
                };
                warnings.push(format!(
                    "allowed_cidrs {cidr} opens GitLab to {reach}: anyone there can reach its sign-in page; list your office or VPN networks instead"
                ));
            }
        }
        if self.strict() && matches!(self.network, NetworkConfig::Import { .. }) {
            warnings.push(
                "hardening = \"strict\" leaves an imported VPC as it is: its flow logs and network ACLs are its owner's to set".into(),
            );
        }
        if matches!(self.network, NetworkConfig::Create { egress: Egress::PublicIp, .. }) {
            warnings.push(
                "egress = \"public-ip\": GitLab's task has a public address; its security group admits only the load balancers, so that is all that reaches it (`status` shows a rule added by hand)".into(),
            );
        }
        if self.domain.is_none() {
            warnings.push(
                "GitLab is served over plain HTTP: the root password and every session travel in clear text; add HTTPS with domain_name, sub_domain and hosted_zone_id (a public Route 53 zone)".into(),
            );
        }
        warnings
    }
}

/// Collects problems, one per key.
#[derive(Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    fn add(&mut self, key: &str, problem: String, help: impl Into<String>) {
        self.0.push(Invalid { key: key.to_string(), problem, help: help.into() })
    }
}

/// Validates everything that can be known without AWS, collecting every problem.
pub fn validate(s: &Settings) -> Result<StackConfig, ConfigError> {
    let mut problems = Problems::default();
    let stack = validate_where(s, &mut problems);
    let domain = validate_domain(s, &mut problems);
    let allowed_cidrs = validate_cidrs(s, domain.is_some(), &mut problems);
    let network = validate_network(s, &mut problems);
    let (gitlab_image, gitlab_image_tag) = validate_image(s, &mut problems);
    let (task_cpu, task_memory_mib) = validate_size(s, &mut problems);
    let gitlab_root_email = s.gitlab_root_email.clone().unwrap_or_else(|| DEFAULT_ROOT_EMAIL.to_string());
    if let Err(problem) = check_email(&gitlab_root_email) {
        problems.add("gitlab_root_email", problem, "write it like admin@example.com");
    }
    let ssh_port = match (s.ssh, s.ssh_port) {
        (Some(true), port) => Some(port.unwrap_or(DEFAULT_SSH_PORT)),
        (_, Some(port)) => {
            problems.add(
                "ssh_port",
                format!("{port} is set but ssh is off"),
                "add ssh = true (or --ssh), or remove ssh_port",
            );
            None
        }
        _ => None,
    };
    if ssh_port == Some(0) {
        problems.add("ssh_port", "0 is not a port".into(), "use 22, or a port such as 2222");
    }
    let (schedule, idle_sleep_minutes, efs_ia_days) = validate_running(s, &mut problems);
    let database = validate_database(s, &mut problems);
    if problems.0.is_empty() {
        Ok(StackConfig {
            stack,
            region: s.region.clone(),
            allowed_cidrs,
            network,
            domain,
            gitlab_root_email,
            gitlab_image,
            tag_source: if s.gitlab_image_tag.is_some() { TagSource::File } else { TagSource::Default },
            gitlab_image_tag,
            gitlab_image_credentials: s.gitlab_image_credentials.clone(),
            task_cpu,
            task_memory_mib,
            ssh_port,
            exec: s.exec.unwrap_or(true),
            object_storage: s.object_storage.unwrap_or(false),
            object_storage_chosen: s.object_storage.is_some(),
            database,
            database_chosen: s.database.is_some(),
            hardening: s.hardening.unwrap_or_default(),
            egress_chosen: s.egress.is_some() || s.use_nat_instance.is_some(),
            cpu_architecture: s.cpu_architecture,
            capacity: s.capacity.unwrap_or_default(),
            schedule,
            idle_sleep_minutes,
            efs_ia_days,
            asleep: false,
            admin_principals: s.admin_principals.clone().unwrap_or_default(),
            operator: None,
        })
    } else {
        Err(ConfigError::Invalid(problems.0))
    }
}

/// The RDS settings with `database = "rds"`; the `db_*` keys without it are a mistake.
fn validate_database(s: &Settings, problems: &mut Problems) -> Option<DatabaseSettings> {
    let given = [
        ("db_instance_class", s.db_instance_class.is_some()),
        ("db_storage_gb", s.db_storage_gb.is_some()),
        ("db_multi_az", s.db_multi_az.is_some()),
        ("db_backup_retention_days", s.db_backup_retention_days.is_some()),
    ];
    if s.database != Some(Database::Rds) {
        for (key, _) in given.iter().filter(|(_, set)| *set) {
            problems.add(
                key,
                "set, but database is not \"rds\" (GitLab's PostgreSQL is bundled in its container)".to_string(),
                "add database = \"rds\" (or --database rds), or remove it",
            );
        }
        return None;
    }
    if s.stack.as_deref().is_some_and(|stack| stack.contains("--")) {
        problems.add(
            "stack",
            "has two hyphens in a row, which RDS refuses in the database's name (<stack>-gitlab)".into(),
            "use single hyphens, e.g. team-gitlab",
        );
    }
    let instance_class = s.db_instance_class.clone().unwrap_or_else(|| DEFAULT_DB_INSTANCE_CLASS.to_string());
    if !instance_class.starts_with("db.") || instance_class.split('.').count() != 3 {
        problems.add(
            "db_instance_class",
            format!("{instance_class:?} is not an RDS instance class"),
            format!("write it like {DEFAULT_DB_INSTANCE_CLASS} or db.m7g.large"),
        );
    }
    let storage_gb = s.db_storage_gb.unwrap_or(DEFAULT_DB_STORAGE_GB);
    if !(20..=65536).contains(&storage_gb) {
        problems.add(
            "db_storage_gb",
            format!("{storage_gb} is outside RDS's 20-65536 GiB for gp3"),
            "use 20 or more; it can grow later, never shrink",
        );
    }
    let backup_retention_days = s.db_backup_retention_days.unwrap_or(DEFAULT_DB_BACKUP_RETENTION_DAYS);
    if !(1..=35).contains(&backup_retention_days) {
        problems.add(
            "db_backup_retention_days",
            format!("{backup_retention_days} is outside RDS's 1-35 days (0 would turn automated backups off)"),
            "use 7, or up to 35",
        );
    }
    Some(DatabaseSettings {
        instance_class,
        storage_gb,
        multi_az: s.db_multi_az.unwrap_or(false),
        backup_retention_days,
    })
}

/// The stack's name and region: what every command checks, `up` or not.
fn validate_where(s: &Settings, problems: &mut Problems) -> String {
    let stack = s.stack.clone().unwrap_or_else(|| DEFAULT_STACK.to_string());
    if let Err(problem) = check_stack_name(&stack) {
        problems.add(
            "stack",
            problem,
            "use 1-32 characters of a-z, 0-9 and '-', starting with a letter, e.g. gitlab-ml",
        );
    }
    if let Some(region) = &s.region
        && !known_region(region)
    {
        let regions = regions();
        let near = did_you_mean(region, &regions);
        problems.add(
            "region",
            format!("{region:?} is not an AWS region"),
            match near {
                Some(near) => format!("did you mean {near}? (regions as of {REGIONS_AS_OF}: data/regions.toml)"),
                None => {
                    format!("write it like eu-west-1 or us-east-1 (regions as of {REGIONS_AS_OF}: data/regions.toml)")
                }
            },
        );
    }
    stack
}

/// The stack's name and region alone, for commands that read nothing else of the configuration.
pub fn validate_stack_and_region(s: &Settings) -> Result<String, ConfigError> {
    let mut problems = Problems::default();
    let stack = validate_where(s, &mut problems);
    if problems.0.is_empty() { Ok(stack) } else { Err(ConfigError::Invalid(problems.0)) }
}

fn validate_cidrs(s: &Settings, https: bool, problems: &mut Problems) -> Vec<Ipv4Net> {
    let mut allowed = Vec::new();
    match &s.allowed_cidrs {
        None => problems.add(
            "allowed_cidrs",
            "is required: nobody could reach GitLab".into(),
            "list the networks allowed to reach GitLab, e.g. allowed_cidrs = [\"203.0.113.0/24\"] or --allowed-cidr 203.0.113.7/32",
        ),
        Some(list) if list.is_empty() => problems.add(
            "allowed_cidrs",
            "is empty: nobody could reach GitLab".into(),
            "add at least one IPv4 CIDR, e.g. \"203.0.113.0/24\"",
        ),
        Some(list) => {
            for (i, text) in list.iter().enumerate() {
                match parse_cidr(text) {
                    Ok(net) => allowed.push(net),
                    Err((problem, help)) => problems.add(&format!("allowed_cidrs[{i}]"), problem, help),
                }
            }
            let per_cidr = if https { 2 } else { 1 };
            let most = SECURITY_GROUP_RULES / per_cidr;
            if list.len() > most {
                problems.add(
                    "allowed_cidrs",
                    format!(
                        "{} entries need {} rules; a security group holds {SECURITY_GROUP_RULES} by default ({per_cidr} per entry{})",
                        list.len(),
                        list.len() * per_cidr,
                        if https { ": ports 80 and 443" } else { "" }
                    ),
                    format!("list at most {most}, merging neighbours into wider prefixes"),
                );
            }
        }
    }
    allowed
}

fn validate_network(s: &Settings, problems: &mut Problems) -> NetworkConfig {
    if let Some(vpc_id) = &s.vpc_id {
        if !is_vpc_id(vpc_id) {
            problems.add(
                "vpc_id",
                format!("{vpc_id:?} is not a VPC id"),
                "write it like vpc-0123456789abcdef0, or remove it to create a new VPC",
            );
        }
        for (key, given) in [
            ("vpc_cidr", s.vpc_cidr.is_some()),
            ("use_nat_instance", s.use_nat_instance.is_some()),
            ("egress", s.egress.is_some()),
            ("availability_zones", s.availability_zones.is_some()),
        ] {
            if given {
                problems.add(
                    key,
                    format!("cannot be combined with vpc_id: an imported VPC keeps its own {}", key.replace('_', " ")),
                    format!("remove {key}, or remove vpc_id to create a new VPC"),
                );
            }
        }
        return NetworkConfig::Import { vpc_id: vpc_id.clone() };
    }
    let text = s.vpc_cidr.as_deref().unwrap_or(DEFAULT_VPC_CIDR);
    let vpc_cidr = match parse_cidr(text) {
        Ok(net) if net.prefix_len() < 16 || net.prefix_len() > 28 => {
            problems.add(
                "vpc_cidr",
                format!("{net} has a /{} prefix; AWS accepts VPC CIDRs from /16 to /28", net.prefix_len()),
                "use a prefix between /16 and /26, e.g. 10.0.0.0/16",
            );
            net
        }
        Ok(net) if net.prefix_len() > 26 => {
            problems.add(
                "vpc_cidr",
                format!("{net} is too small for four subnets of at least /28"),
                "use a prefix of /26 or shorter, e.g. 10.0.0.0/24",
            );
            net
        }
        Ok(net) => net,
        Err((problem, help)) => {
            problems.add("vpc_cidr", problem, help);
            Ipv4Net::default()
        }
    };
    let alias = s.use_nat_instance.map(|on| if on { Egress::NatInstance } else { Egress::NatGateway });
    let egress = match (s.egress, alias) {
        (Some(egress), Some(alias)) if egress != alias => {
            problems.add(
                "use_nat_instance",
                format!("use_nat_instance = {} contradicts egress", s.use_nat_instance.unwrap_or_default()),
                "remove use_nat_instance: egress says it (\"nat-instance\", \"nat-gateway\" or \"public-ip\")",
            );
            egress
        }
        (Some(egress), _) | (None, Some(egress)) => egress,
        (None, None) => Egress::NatInstance,
    };
    let zones = s.availability_zones.as_ref().and_then(|zones| {
        let ok = zones.len() == 2 && zones[0] != zones[1] && zones.iter().all(|z| is_zone(z));
        if !ok {
            problems.add(
                "availability_zones",
                format!("{zones:?} is not two distinct availability zone names"),
                "name two zones of the region, e.g. [\"us-east-1a\", \"us-east-1b\"] (`aws ec2 describe-availability-zones`)",
            );
            return None;
        }
        if let Some(region) = &s.region
            && zones.iter().any(|z| !z.starts_with(region.as_str()))
        {
            problems.add("availability_zones", format!("{zones:?} are not all zones of {region}"), format!("name zones of {region}, e.g. {region}a"));
        }
        Some([zones[0].clone(), zones[1].clone()])
    });
    NetworkConfig::Create { vpc_cidr, egress, zones }
}

/// When and how GitLab runs: the schedule, the idle sleep, the file system's cheaper class,
/// and Spot with the architecture it allows.
fn validate_running(
    s: &Settings,
    problems: &mut Problems,
) -> (Option<crate::schedule::OfficeHours>, Option<u32>, Option<u32>) {
    let schedule = s.schedule.as_ref().and_then(|setting| match crate::schedule::OfficeHours::from_setting(setting) {
        Ok(hours) => Some(hours),
        Err(wrong) => {
            for (field, problem) in wrong {
                problems.add(
                    &format!("schedule.{field}"),
                    problem,
                    "write it like schedule = \"Mon-Fri 07:30-19:30 Europe/Berlin\"",
                );
            }
            None
        }
    });
    let idle = s.idle_sleep.as_deref().and_then(|text| match humantime::parse_duration(text) {
        Ok(d) if (15 * 60..=24 * 3600).contains(&d.as_secs()) => Some((d.as_secs() / 60).div_ceil(5) as u32 * 5),
        Ok(_) => {
            problems.add(
                "idle_sleep",
                format!("{text:?} is outside 15m to 24h"),
                "CloudWatch's alarm looks back at most a day: use e.g. 2h",
            );
            None
        }
        Err(_) => {
            problems.add("idle_sleep", format!("{text:?} is not a duration"), "write it like 2h or 90m");
            None
        }
    });
    const IA_DAYS: [u32; 9] = [1, 7, 14, 30, 60, 90, 180, 270, 365];
    let ia = s.efs_infrequent_access_after.as_deref().and_then(|text| {
        let days =
            humantime::parse_duration(text).ok().map(|d| d.as_secs() / 86400).and_then(|d| u32::try_from(d).ok());
        match days.filter(|d| IA_DAYS.contains(d)) {
            Some(days) => Some(days),
            None => {
                problems.add(
                    "efs_infrequent_access_after",
                    format!("{text:?} is not one of EFS's periods"),
                    "use 1d, 7d, 14d, 30d, 60d, 90d, 180d, 270d or 365d",
                );
                None
            }
        }
    });
    if s.capacity == Some(Capacity::Spot) && s.cpu_architecture == Some(Architecture::Arm64) {
        problems.add(
            "capacity",
            "Fargate Spot runs x86_64 tasks only (AWS offers no ARM on Spot)".into(),
            "set cpu_architecture = \"x86_64\" for Spot, or capacity = \"on-demand\" for Graviton",
        );
    }
    (schedule, idle, ia)
}

fn validate_domain(s: &Settings, problems: &mut Problems) -> Option<DomainConfig> {
    match (&s.domain_name, &s.sub_domain, &s.hosted_zone_id) {
        (None, None, None) => None,
        (Some(domain_name), Some(sub_domain), Some(hosted_zone_id)) => {
            // What the console and the CLI print, normalised: trailing dots, capitals, the
            // /hostedzone/ prefix.
            let domain_name = domain_name.trim_end_matches('.').to_ascii_lowercase();
            let sub_domain = sub_domain.trim_end_matches('.').to_ascii_lowercase();
            let hosted_zone_id = hosted_zone_id.trim().trim_start_matches("/hostedzone/").to_string();
            if !is_dns_name(&domain_name) || !domain_name.contains('.') {
                problems.add(
                    "domain_name",
                    format!("{domain_name:?} is not a domain name"),
                    "write it like example.com (no scheme)",
                );
            }
            if !is_dns_name(&sub_domain) {
                problems.add(
                    "sub_domain",
                    format!("{sub_domain:?} is not a DNS label"),
                    "write it like gitlab (letters, digits, '-')",
                );
            }
            if !is_hosted_zone_id(&hosted_zone_id) {
                problems.add(
                    "hosted_zone_id",
                    format!("{hosted_zone_id:?} is not a Route 53 hosted zone id"),
                    "write it like Z0123456789ABCDEFGHIJ (from `aws route53 list-hosted-zones`)",
                );
            }
            Some(DomainConfig { domain_name, sub_domain, hosted_zone_id })
        }
        _ => {
            let missing: Vec<&str> =
                [("domain_name", &s.domain_name), ("sub_domain", &s.sub_domain), ("hosted_zone_id", &s.hosted_zone_id)]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k)
                    .collect();
            problems.add(
                &missing.join(", "),
                "missing: domain_name, sub_domain and hosted_zone_id go together (HTTPS needs all three)".into(),
                "set all three for HTTPS, or none for plain HTTP on the load balancer's name",
            );
            None
        }
    }
}

fn validate_image(s: &Settings, problems: &mut Problems) -> (String, String) {
    let image = s.gitlab_image.clone().unwrap_or_else(|| DEFAULT_GITLAB_IMAGE.to_string());
    if !is_image_repository(&image) {
        problems.add(
            "gitlab_image",
            format!("{image:?} is not an image repository"),
            "write it without a tag, like gitlab/gitlab-ce or 123456789012.dkr.ecr.us-east-1.amazonaws.com/gitlab/gitlab-ce (the tag is gitlab_image_tag)",
        );
    }
    let tag = s.gitlab_image_tag.clone().unwrap_or_else(|| DEFAULT_GITLAB_IMAGE_TAG.to_string());
    if crate::gitlab_version::Version::parse(&tag).is_none() {
        problems.add(
            "gitlab_image_tag",
            format!("{tag:?} is not a pinned gitlab-ce release tag"),
            format!(
                "use a release tag like {DEFAULT_GITLAB_IMAGE_TAG} (moving tags such as latest or rc can upgrade GitLab across versions on any restart)"
            ),
        );
    }
    for (i, arn) in s.admin_principals.iter().flatten().enumerate() {
        if !is_principal_arn(arn) {
            problems.add(
                &format!("admin_principals[{i}]"),
                format!("{arn:?} is not the ARN of an IAM role or user"),
                "write it like arn:aws:iam::123456789012:role/Admins (a role's ARN with its path, not an assumed-role session)",
            );
        }
    }
    if let Some(arn) = &s.gitlab_image_credentials
        && !(arn.starts_with("arn:") && arn.contains(":secretsmanager:") && arn.contains(":secret:"))
    {
        problems.add(
            "gitlab_image_credentials",
            format!("{arn:?} is not the ARN of a Secrets Manager secret"),
            "write it like arn:aws:secretsmanager:us-east-1:123456789012:secret:dockerhub-AbCdEf (a secret with \"username\" and \"password\")",
        );
    }
    (image, tag)
}

fn validate_size(s: &Settings, problems: &mut Problems) -> (u32, u32) {
    let task_cpu = s.task_cpu.unwrap_or(DEFAULT_TASK_CPU);
    let task_memory_mib = s.task_memory_mib.unwrap_or(DEFAULT_TASK_MEMORY_MIB);
    match fargate_memory_choices(task_cpu) {
        None => problems.add(
            "task_cpu",
            format!("{task_cpu} is not a Fargate CPU size"),
            "use one of 1024, 2048, 4096, 8192, 16384 (CPU units; 1024 = 1 vCPU)",
        ),
        Some(choices) if !choices.contains(&task_memory_mib) => problems.add(
            "task_memory_mib",
            format!("{task_memory_mib} MiB is not a Fargate memory size for task_cpu = {task_cpu}"),
            format!(
                "with task_cpu = {task_cpu} use {} to {} MiB in steps of {}",
                choices[0],
                choices[choices.len() - 1],
                choices[1] - choices[0]
            ),
        ),
        Some(_) if task_memory_mib < GITLAB_MIN_MEMORY_MIB => problems.add(
            "task_memory_mib",
            format!("{task_memory_mib} MiB is below GitLab's minimum of {GITLAB_MIN_MEMORY_MIB} MiB"),
            "use at least 4096 (the default 6144 suits a small team)",
        ),
        Some(_) => {}
    }
    (task_cpu, task_memory_mib)
}

/// The stack name ends up in AWS resource names (load balancers and target groups allow
/// 32 characters, lower-case, no leading or trailing hyphen; security group names may not
/// start with `sg-`).
pub fn check_stack_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err(format!("{name:?} must be 1-32 characters long"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("{name:?} must start with a lower-case letter"));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(format!("{name:?} may only contain a-z, 0-9 and '-'"));
    }
    if name.ends_with('-') {
        return Err(format!("{name:?} must not end with '-'"));
    }
    if name.starts_with("internal-") {
        return Err(format!("{name:?} must not start with 'internal-' (AWS reserves it for load balancer names)"));
    }
    if name.starts_with("sg-") {
        return Err(format!("{name:?} must not start with 'sg-' (EC2 refuses security group names of that form)"));
    }
    Ok(())
}

/// At most 254 characters, one `@`, a domain with a dot, no spaces or control characters.
fn check_email(email: &str) -> Result<(), String> {
    if email.len() > 254 {
        return Err(format!("is {} characters long; an e-mail address has at most 254", email.len()));
    }
    if email.chars().any(char::is_control) {
        return Err(format!("{email:?} contains control characters"));
    }
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && !local.chars().any(|c| c.is_whitespace() || c == '@')
                && is_dns_name(domain)
                && domain.contains('.')
        }
        None => false,
    };
    if valid { Ok(()) } else { Err(format!("{email:?} is not an e-mail address")) }
}

/// Parses an IPv4 CIDR and refuses host bits, which AWS would reject or silently mask.
fn parse_cidr(text: &str) -> Result<Ipv4Net, (String, String)> {
    let example = "write it like 203.0.113.0/24 (an IPv4 network and a prefix length)".to_string();
    let Some((addr, prefix)) = text.split_once('/') else {
        return Err((
            format!("{text:?} has no prefix length"),
            format!("add one, e.g. {text}/32 for a single address"),
        ));
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| (format!("{text:?} is not an IPv4 CIDR"), example.clone()))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| (format!("{text:?} has a prefix length outside 0-32"), example.clone()))?;
    let net = Ipv4Net::new(addr, prefix).map_err(|_| (format!("{text:?} is not an IPv4 CIDR"), example))?;
    if net.trunc() != net {
        return Err((format!("{text:?} has host bits set"), format!("did you mean {}?", net.trunc())));
    }
    Ok(net)
}

/// The memory sizes (MiB) Fargate accepts for a CPU size, Linux platform 1.4.0.
/// <https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size>
pub fn fargate_memory_choices(cpu: u32) -> Option<Vec<u32>> {
    let (from, to, step) = match cpu {
        256 => return Some(vec![512, 1024, 2048]),
        512 => (1024, 4096, 1024),
        1024 => (2048, 8192, 1024),
        2048 => (4096, 16384, 1024),
        4096 => (8192, 30720, 1024),
        8192 => (16384, 61440, 4096),
        16384 => (32768, 122880, 8192),
        _ => return None,
    };
    Some((from..=to).step_by(step as usize).collect())
}

const REGIONS_FILE: &str = include_str!("../data/regions.toml");
const REGIONS_AS_OF: &str = "2026-12-04";

/// Every region of every partition, from data/regions.toml.
fn regions() -> Vec<&'static str> {
    static REGIONS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    REGIONS
        .get_or_init(|| {
            let table: toml::Table = toml::from_str(REGIONS_FILE).expect("data/regions.toml is checked by a test");
            table
                .values()
                .filter_map(|v| v.as_array())
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .iter()
        .map(String::as_str)
        .collect()
}

/// Whether `s` names a region of one of AWS's partitions.
pub fn known_region(s: &str) -> bool {
    regions().contains(&s)
}

/// `arn:<partition>:iam::<account>:role/...` or `:user/...`: what `aws:PrincipalArn` holds.
fn is_principal_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit())
            && (resource.starts_with("role/") || resource.starts_with("user/"))
            && !resource.contains('*'))
}

/// Shaped like a region name (for zones: `us-east-1a`).
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// A zone is its region's name and a letter (us-east-1a), or a Local Zone name.
fn is_zone(s: &str) -> bool {
    let Some(last) = s.chars().last() else { return false };
    last.is_ascii_lowercase() && is_region(&s[..s.len() - 1])
}

fn is_vpc_id(s: &str) -> bool {
    s.strip_prefix("vpc-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}

/// Route 53 ids are upper-case letters and digits (AWS's own start with Z, but that is not
/// documented, so it is not required).
fn is_hosted_zone_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `[host[:port]/]path` with lower-case path components and no tag or digest.
fn is_image_repository(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 || s.contains('@') {
        return false;
    }
    let mut parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
        let host = parts.remove(0);
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)) {
            return false;
        }
    }
    parts
        .iter()
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings { allowed_cidrs: Some(vec!["203.0.113.0/24".into()]), ..Default::default() }
    }

    fn https(s: &mut Settings) {
        s.domain_name = Some("example.com".into());
        s.sub_domain = Some("git".into());
        s.hosted_zone_id = Some("Z123".into());
    }

    #[test]
    fn defaults_validate() {
        let cfg = validate(&base()).expect("valid");
        assert_eq!(cfg.stack, "gitlab");
        assert_eq!(
            cfg.network,
            NetworkConfig::Create {
                vpc_cidr: "10.0.0.0/16".parse().unwrap(),
                egress: Egress::NatInstance,
                zones: None
            }
        );
        assert_eq!((cfg.task_cpu, cfg.task_memory_mib), (2048, 6144));
        assert_ne!(cfg.gitlab_image_tag, "latest");
        assert_eq!(cfg.image(), "gitlab/gitlab-ce:19.4.1-ce.0");
        assert_eq!(cfg.ssh_port, None);
    }

    #[test]
    fn each_mistake_names_its_key() {
        type Mistake = Box<dyn Fn(&mut Settings)>;
        let rows: Vec<(&str, Mistake)> = vec![
            ("stack", Box::new(|s| s.stack = Some("Gitlab".into()))),
            ("stack", Box::new(|s| s.stack = Some("1abc".into()))),
            ("stack", Box::new(|s| s.stack = Some("a".repeat(33)))),
            ("stack", Box::new(|s| s.stack = Some("abc-".into()))),
            ("stack", Box::new(|s| s.stack = Some("ab_c".into()))),
            ("stack", Box::new(|s| s.stack = Some("sg-team".into()))),
            ("region", Box::new(|s| s.region = Some("moon-1".into()))),
            ("allowed_cidrs", Box::new(|s| s.allowed_cidrs = None)),
            ("allowed_cidrs", Box::new(|s| s.allowed_cidrs = Some(vec![]))),
            (
                "allowed_cidrs[1]",
                Box::new(|s| s.allowed_cidrs = Some(vec!["10.0.0.0/8".into(), "10.0.0.300/32".into()])),
            ),
            ("allowed_cidrs[0]", Box::new(|s| s.allowed_cidrs = Some(vec!["10.0.0.1/24".into()]))),
            ("allowed_cidrs[0]", Box::new(|s| s.allowed_cidrs = Some(vec!["10.0.0.1".into()]))),
            ("allowed_cidrs[0]", Box::new(|s| s.allowed_cidrs = Some(vec!["10.0.0.0/33".into()]))),
            ("allowed_cidrs[0]", Box::new(|s| s.allowed_cidrs = Some(vec!["2001:db8::/32".into()]))),
            (
                "allowed_cidrs",
                Box::new(|s| {
                    https(s);
                    s.allowed_cidrs = Some((0..31).map(|i| format!("10.{i}.0.0/16")).collect())
                }),
            ),
            ("vpc_cidr", Box::new(|s| s.vpc_cidr = Some("10.0.0.0/8".into()))),
            ("vpc_cidr", Box::new(|s| s.vpc_cidr = Some("10.0.0.0/27".into()))),
            ("vpc_cidr", Box::new(|s| s.vpc_cidr = Some("10.0.0.0".into()))),
            ("vpc_cidr", Box::new(|s| s.vpc_cidr = Some("10.1.2.3/16".into()))),
            ("vpc_id", Box::new(|s| s.vpc_id = Some("vpc-xyz".into()))),
            (
                "vpc_cidr",
                Box::new(|s| {
                    s.vpc_id = Some("vpc-0123456789abcdef0".into());
                    s.vpc_cidr = Some("10.0.0.0/16".into())
                }),
            ),
            (
                "use_nat_instance",
                Box::new(|s| {
                    s.vpc_id = Some("vpc-01234567".into());
                    s.use_nat_instance = Some(true)
                }),
            ),
            ("availability_zones", Box::new(|s| s.availability_zones = Some(vec!["us-east-1a".into()]))),
            (
                "availability_zones",
                Box::new(|s| s.availability_zones = Some(vec!["us-east-1a".into(), "us-east-1a".into()])),
            ),
            (
                "availability_zones",
                Box::new(|s| {
                    s.region = Some("eu-west-1".into());
                    s.availability_zones = Some(vec!["us-east-1a".into(), "us-east-1b".into()])
                }),
            ),
            ("sub_domain, hosted_zone_id", Box::new(|s| s.domain_name = Some("example.com".into()))),
            (
                "domain_name",
                Box::new(|s| {
                    s.sub_domain = Some("git".into());
                    s.hosted_zone_id = Some("Z123".into())
                }),
            ),
            (
                "domain_name",
                Box::new(|s| {
                    https(s);
                    s.domain_name = Some("https://example.com".into())
                }),
            ),
            (
                "sub_domain",
                Box::new(|s| {
                    https(s);
                    s.sub_domain = Some("-git".into())
                }),
            ),
            (
                "hosted_zone_id",
                Box::new(|s| {
                    https(s);
                    s.hosted_zone_id = Some("zone1".into())
                }),
            ),
            ("gitlab_root_email", Box::new(|s| s.gitlab_root_email = Some("admin".into()))),
            ("gitlab_root_email", Box::new(|s| s.gitlab_root_email = Some("admin@localhost".into()))),
            ("gitlab_root_email", Box::new(|s| s.gitlab_root_email = Some("ad\u{1b}[31mmin@example.com".into()))),
            ("gitlab_root_email", Box::new(|s| s.gitlab_root_email = Some(format!("{}@example.com", "a".repeat(250))))),
            ("gitlab_image_tag", Box::new(|s| s.gitlab_image_tag = Some("latest".into()))),
            ("gitlab_image_tag", Box::new(|s| s.gitlab_image_tag = Some("19.4.1-ee.0".into()))),
            ("gitlab_image_tag", Box::new(|s| s.gitlab_image_tag = Some("19.4".into()))),
            ("gitlab_image", Box::new(|s| s.gitlab_image = Some("gitlab/gitlab-ce:19.4.1-ce.0".into()))),
            ("gitlab_image", Box::new(|s| s.gitlab_image = Some("GitLab/CE".into()))),
            ("gitlab_image_credentials", Box::new(|s| s.gitlab_image_credentials = Some("dockerhub".into()))),
            ("task_cpu", Box::new(|s| s.task_cpu = Some(3000))),
            ("task_memory_mib", Box::new(|s| s.task_memory_mib = Some(3000))),
            (
                "task_memory_mib",
                Box::new(|s| {
                    s.task_cpu = Some(512);
                    s.task_memory_mib = Some(2048)
                }),
            ),
            ("ssh_port", Box::new(|s| s.ssh_port = Some(2222))),
            (
                "ssh_port",
                Box::new(|s| {
                    s.ssh = Some(true);
                    s.ssh_port = Some(0)
                }),
            ),
        ];
        for (key, mutate) in rows {
            let mut s = base();
            mutate(&mut s);
            match validate(&s) {
                Err(ConfigError::Invalid(problems)) => {
                    assert!(
                        problems.iter().any(|p| p.key == key && !p.help.is_empty()),
                        "expected a problem on {key}, got {problems:?}"
                    )
                }
                other => panic!("expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn what_the_console_prints_is_accepted_and_normalised() {
        let mut s = base();
        s.domain_name = Some("Example.COM.".into());
        s.sub_domain = Some("Git".into());
        s.hosted_zone_id = Some("/hostedzone/Z0123ABC".into());
        let domain = validate(&s).unwrap().domain.unwrap();
        assert_eq!(
            (domain.domain_name.as_str(), domain.sub_domain.as_str(), domain.hosted_zone_id.as_str()),
            ("example.com", "git", "Z0123ABC")
        );
        assert_eq!(domain.fqdn(), "git.example.com");
    }

    #[test]
    fn the_security_group_quota_caps_allowed_cidrs() {
        let mut s = base();
        s.allowed_cidrs = Some((0..60).map(|i| format!("10.{i}.0.0/16")).collect());
        assert!(validate(&s).is_ok(), "60 CIDRs fit without HTTPS");
        https(&mut s);
        assert!(validate(&s).is_err(), "60 CIDRs need 120 rules with HTTPS");
        s.allowed_cidrs = Some((0..30).map(|i| format!("10.{i}.0.0/16")).collect());
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn exposure_is_said() {
        let mut s = base();
        s.allowed_cidrs = Some(vec!["0.0.0.0/0".into()]);
        let warnings = validate(&s).unwrap().warnings();
        assert!(warnings.iter().any(|w| w.contains("whole internet")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("plain HTTP") && w.contains("domain_name")), "{warnings:?}");
        https(&mut s);
        s.allowed_cidrs = Some(vec!["203.0.113.0/24".into()]);
        assert_eq!(validate(&s).unwrap().warnings(), Vec::<String>::new());
    }

    #[test]
    fn unknown_and_mistyped_keys_are_rejected_with_a_suggestion() {
        let (message, help) = parse_toml("allowed_cidrs = [\"10.0.0.0/8\"]\nvpc_cdir = \"10.0.0.0/16\"\n").unwrap_err();
        assert!(message.contains("vpc_cdir"), "{message}");
        assert!(help.contains("did you mean `vpc_cidr`"), "{help}");
        let (message, _) = parse_toml("task_cpu = \"2048\"\n").unwrap_err();
        assert!(message.contains("task_cpu"), "{message}");
        // Every unknown key at once, each with its nearest valid key.
        let (message, help) = parse_toml("alowed_cidrs = []\nvpc_cdir = \"x\"\nsssh = true\n").unwrap_err();
        for key in ["alowed_cidrs", "vpc_cdir", "sssh"] {
            assert!(message.contains(key), "{message}");
        }
        for near in ["`allowed_cidrs` for `alowed_cidrs`", "`vpc_cidr` for `vpc_cdir`", "`ssh` for `sssh`"] {
            assert!(help.contains(near), "{help}");
        }
    }

    #[test]
    fn images_from_other_registries_are_accepted() {
        for image in [
            "gitlab/gitlab-ce",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/gitlab/gitlab-ce",
            "localhost:5000/gitlab",
        ] {
            let mut s = base();
            s.gitlab_image = Some(image.into());
            let cfg = validate(&s).unwrap_or_else(|e| panic!("{image}: {e}"));
            assert_eq!(cfg.image_in_ecr(), image.contains(".dkr.ecr."), "{image}");
        }
    }

    #[test]
    fn flags_override_file() {
        let file = parse_toml("allowed_cidrs = [\"10.0.0.0/8\"]\nvpc_cidr = \"10.1.0.0/16\"\n").unwrap();
        let flags = Settings { vpc_cidr: Some("10.2.0.0/16".into()), ..Default::default() };
        let merged = file.overlay(flags);
        assert_eq!(merged.vpc_cidr.as_deref(), Some("10.2.0.0/16"));
        assert_eq!(merged.allowed_cidrs, Some(vec!["10.0.0.0/8".to_string()]));
    }

    #[test]
    fn fargate_table_matches_aws() {
        assert_eq!(fargate_memory_choices(2048).unwrap().len(), 13);
        assert!(fargate_memory_choices(8192).unwrap().contains(&61440));
        assert!(!fargate_memory_choices(8192).unwrap().contains(&18432));
        assert!(fargate_memory_choices(3000).is_none());
    }

    #[test]
    fn regions_are_checked_against_the_partitions_list() {
        assert!(known_region("eu-west-1") && known_region("us-gov-west-1") && known_region("cn-north-1"));
        let s = Settings {
            region: Some("us-esat-1".into()),
            allowed_cidrs: Some(vec!["203.0.113.0/24".into()]),
            ..Default::default()
        };
        let Err(ConfigError::Invalid(problems)) = validate(&s) else { panic!("a typo is refused") };
        assert!(problems[0].help.contains("did you mean us-east-1"), "{problems:?}");
        let table: toml::Table = toml::from_str(REGIONS_FILE).unwrap();
        assert_eq!(table["as_of"].as_str(), Some(REGIONS_AS_OF), "the date the message gives is the file's");
    }
}
