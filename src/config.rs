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
/// Pinned on purpose: `latest` can jump a major version on any task restart, and GitLab
/// only supports upgrades along its documented upgrade path.
pub const DEFAULT_GITLAB_IMAGE_TAG: &str = "19.4.1-ce.0";
pub const DEFAULT_TASK_CPU: u32 = 2048;
pub const DEFAULT_TASK_MEMORY_MIB: u32 = 6144;
/// GitLab's own minimum; below it Puma and Sidekiq are OOM-killed during first boot.
const GITLAB_MIN_MEMORY_MIB: u32 = 4096;

/// Every configurable key. The same struct is the TOML schema and the command-line flags
/// of `up` and `plan`, so a key and its flag cannot drift apart.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Stack name (global flag --stack)
    #[arg(skip)]
    pub stack: Option<String>,
    /// AWS region (global flag --region)
    #[arg(skip)]
    pub region: Option<String>,
    /// IPv4 CIDR allowed to reach GitLab; repeat for several (config: allowed_cidrs)
    #[arg(long = "allowed-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Option<Vec<String>>,
    /// CIDR of the VPC to create [default: 10.0.0.0/16]
    #[arg(long, value_name = "CIDR")]
    pub vpc_cidr: Option<String>,
    /// Use a t4g.nano NAT instance instead of a NAT gateway
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub use_nat_instance: Option<bool>,
    /// Use this existing VPC instead of creating one
    #[arg(long, value_name = "VPC_ID")]
    pub vpc_id: Option<String>,
    /// Domain for HTTPS (with --sub-domain and --hosted-zone-id)
    #[arg(long, value_name = "DOMAIN")]
    pub domain_name: Option<String>,
    /// Host name under the domain, e.g. gitlab
    #[arg(long, value_name = "NAME")]
    pub sub_domain: Option<String>,
    /// Route 53 hosted zone of the domain
    #[arg(long, value_name = "ZONE_ID")]
    pub hosted_zone_id: Option<String>,
    /// E-mail of GitLab's root user [default: admin@example.com]
    #[arg(long, value_name = "EMAIL")]
    pub gitlab_root_email: Option<String>,
    /// gitlab/gitlab-ce image tag, e.g. 19.4.1-ce.0
    #[arg(long, value_name = "TAG")]
    pub gitlab_image_tag: Option<String>,
    /// Fargate task CPU units [default: 2048]
    #[arg(long, value_name = "UNITS")]
    pub task_cpu: Option<u32>,
    /// Fargate task memory in MiB [default: 6144]
    #[arg(long, value_name = "MIB")]
    pub task_memory_mib: Option<u32>,
}

impl Settings {
    /// Values in `over` win; the rest come from `self`.
    pub fn overlay(self, over: Settings) -> Settings {
        Settings {
            stack: over.stack.or(self.stack),
            region: over.region.or(self.region),
            allowed_cidrs: over.allowed_cidrs.or(self.allowed_cidrs),
            vpc_cidr: over.vpc_cidr.or(self.vpc_cidr),
            use_nat_instance: over.use_nat_instance.or(self.use_nat_instance),
            vpc_id: over.vpc_id.or(self.vpc_id),
            domain_name: over.domain_name.or(self.domain_name),
            sub_domain: over.sub_domain.or(self.sub_domain),
            hosted_zone_id: over.hosted_zone_id.or(self.hosted_zone_id),
            gitlab_root_email: over.gitlab_root_email.or(self.gitlab_root_email),
            gitlab_image_tag: over.gitlab_image_tag.or(self.gitlab_image_tag),
            task_cpu: over.task_cpu.or(self.task_cpu),
            task_memory_mib: over.task_memory_mib.or(self.task_memory_mib),
        }
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
    #[error(
        "config file {0} does not exist\n    help: create it, or drop --config to use ./{DEFAULT_CONFIG_FILE} or flags only"
    )]
    Missing(PathBuf),
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "config file {path} is not valid: {message}\n    help: keys are listed in the README under \"Configuration\""
    )]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Invalid>),
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
    parse_toml(&text).map_err(|message| ConfigError::Parse { path, message })
}

pub fn parse_toml(text: &str) -> Result<Settings, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// The NAT flavour for a VPC this tool creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    Gateway,
    Instance,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkConfig {
    Create { vpc_cidr: Ipv4Net, nat: NatKind },
    Import { vpc_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    pub domain_name: String,
    pub sub_domain: String,
    pub hosted_zone_id: String,
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
    pub gitlab_image_tag: String,
    pub task_cpu: u32,
    pub task_memory_mib: u32,
}

/// Validates everything that can be known without AWS, collecting every problem.
pub fn validate(s: &Settings) -> Result<StackConfig, ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, problem: String, help: &str| {
        problems.push(Invalid { key: key.to_string(), problem, help: help.to_string() })
    };

    let stack = s.stack.clone().unwrap_or_else(|| DEFAULT_STACK.to_string());
    if let Err(problem) = check_stack_name(&stack) {
        bad("stack", problem, "use 1-32 characters of a-z, 0-9 and '-', starting with a letter, e.g. gitlab-ml");
    }
    if let Some(region) = &s.region
        && !is_region(region)
    {
        bad("region", format!("{region:?} is not an AWS region name"), "write it like eu-west-1 or us-east-1");
    }

    let mut allowed_cidrs = Vec::new();
    match &s.allowed_cidrs {
        None => bad(
            "allowed_cidrs",
            "is required: nobody could reach GitLab".into(),
            "list the networks allowed to reach GitLab, e.g. allowed_cidrs = [\"203.0.113.0/24\"] or --allowed-cidr 203.0.113.7/32",
        ),
        Some(list) if list.is_empty() => bad(
            "allowed_cidrs",
            "is empty: nobody could reach GitLab".into(),
            "add at least one IPv4 CIDR, e.g. \"203.0.113.0/24\"",
        ),
        Some(list) => {
            for (i, text) in list.iter().enumerate() {
                match parse_cidr(text) {
                    Ok(net) => allowed_cidrs.push(net),
                    Err((problem, help)) => bad(&format!("allowed_cidrs[{i}]"), problem, &help),
                }
            }
        }
    }

    let network = match &s.vpc_id {
        Some(vpc_id) => {
            if !is_vpc_id(vpc_id) {
                bad(
                    "vpc_id",
                    format!("{vpc_id:?} is not a VPC id"),
                    "write it like vpc-0123456789abcdef0, or remove it to create a new VPC",
                );
            }
            if s.vpc_cidr.is_some() {
                bad(
                    "vpc_cidr",
                    "cannot be combined with vpc_id: an imported VPC keeps its own CIDR".into(),
                    "remove vpc_cidr, or remove vpc_id to create a new VPC",
                );
            }
            if s.use_nat_instance.is_some() {
                bad(
                    "use_nat_instance",
                    "cannot be combined with vpc_id: an imported VPC keeps its own NAT".into(),
                    "remove use_nat_instance, or remove vpc_id to create a new VPC",
                );
            }
            NetworkConfig::Import { vpc_id: vpc_id.clone() }
        }
        None => {
            let text = s.vpc_cidr.as_deref().unwrap_or(DEFAULT_VPC_CIDR);
            let vpc_cidr = match parse_cidr(text) {
                Ok(net) if net.prefix_len() < 16 || net.prefix_len() > 28 => {
                    bad(
                        "vpc_cidr",
                        format!("{net} has a /{} prefix; AWS accepts VPC CIDRs from /16 to /28", net.prefix_len()),
                        "use a prefix between /16 and /26, e.g. 10.0.0.0/16",
                    );
                    net
                }
                Ok(net) if net.prefix_len() > 26 => {
                    bad(
                        "vpc_cidr",
                        format!("{net} is too small for four subnets of at least /28"),
                        "use a prefix of /26 or shorter, e.g. 10.0.0.0/24",
                    );
                    net
                }
                Ok(net) => net,
                Err((problem, help)) => {
                    bad("vpc_cidr", problem, &help);
                    Ipv4Net::default()
                }
            };
            let nat = if s.use_nat_instance.unwrap_or(false) { NatKind::Instance } else { NatKind::Gateway };
            NetworkConfig::Create { vpc_cidr, nat }
        }
    };

    let domain = match (&s.domain_name, &s.sub_domain, &s.hosted_zone_id) {
        (None, None, None) => None,
        (Some(domain_name), Some(sub_domain), Some(hosted_zone_id)) => {
            if !is_dns_name(domain_name) || !domain_name.contains('.') {
                bad(
                    "domain_name",
                    format!("{domain_name:?} is not a domain name"),
                    "write it like example.com (no scheme, no trailing dot)",
                );
            }
            if !is_dns_name(sub_domain) {
                bad(
                    "sub_domain",
                    format!("{sub_domain:?} is not a DNS label"),
                    "write it like gitlab (letters, digits, '-')",
                );
            }
            if !is_hosted_zone_id(hosted_zone_id) {
                bad(
                    "hosted_zone_id",
                    format!("{hosted_zone_id:?} is not a Route 53 hosted zone id"),
                    "write it like Z0123456789ABCDEFGHIJ (from `aws route53 list-hosted-zones`)",
                );
            }
            Some(DomainConfig {
                domain_name: domain_name.clone(),
                sub_domain: sub_domain.clone(),
                hosted_zone_id: hosted_zone_id.clone(),
            })
        }
        _ => {
            let missing: Vec<&str> =
                [("domain_name", &s.domain_name), ("sub_domain", &s.sub_domain), ("hosted_zone_id", &s.hosted_zone_id)]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| k)
                    .collect();
            bad(
                &missing.join(", "),
                "missing: domain_name, sub_domain and hosted_zone_id go together (HTTPS needs all three)".into(),
                "set all three for HTTPS, or none for plain HTTP on the load balancer's name",
            );
            None
        }
    };

    let gitlab_root_email = s.gitlab_root_email.clone().unwrap_or_else(|| DEFAULT_ROOT_EMAIL.to_string());
    if !is_email(&gitlab_root_email) {
        bad(
            "gitlab_root_email",
            format!("{gitlab_root_email:?} is not an e-mail address"),
            "write it like admin@example.com",
        );
    }

    let gitlab_image_tag = s.gitlab_image_tag.clone().unwrap_or_else(|| DEFAULT_GITLAB_IMAGE_TAG.to_string());
    if !is_pinned_ce_tag(&gitlab_image_tag) {
        bad(
            "gitlab_image_tag",
            format!("{gitlab_image_tag:?} is not a pinned gitlab-ce release tag"),
            &format!(
                "use a release tag like {DEFAULT_GITLAB_IMAGE_TAG} (moving tags such as latest or rc can upgrade GitLab across versions on any restart)"
            ),
        );
    }

    let task_cpu = s.task_cpu.unwrap_or(DEFAULT_TASK_CPU);
    let task_memory_mib = s.task_memory_mib.unwrap_or(DEFAULT_TASK_MEMORY_MIB);
    match fargate_memory_choices(task_cpu) {
        None => bad(
            "task_cpu",
            format!("{task_cpu} is not a Fargate CPU size"),
            "use one of 1024, 2048, 4096, 8192, 16384 (CPU units; 1024 = 1 vCPU)",
        ),
        Some(choices) if !choices.contains(&task_memory_mib) => bad(
            "task_memory_mib",
            format!("{task_memory_mib} MiB is not a Fargate memory size for task_cpu = {task_cpu}"),
            &format!(
                "with task_cpu = {task_cpu} use {} to {} MiB in steps of {}",
                choices[0],
                choices[choices.len() - 1],
                choices[1] - choices[0]
            ),
        ),
        Some(_) if task_memory_mib < GITLAB_MIN_MEMORY_MIB => bad(
            "task_memory_mib",
            format!("{task_memory_mib} MiB is below GitLab's minimum of {GITLAB_MIN_MEMORY_MIB} MiB"),
            "use at least 4096 (the default 6144 suits a small team)",
        ),
        Some(_) => {}
    }

    if problems.is_empty() {
        Ok(StackConfig {
            stack,
            region: s.region.clone(),
            allowed_cidrs,
            network,
            domain,
            gitlab_root_email,
            gitlab_image_tag,
            task_cpu,
            task_memory_mib,
        })
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The stack name ends up in AWS resource names (load balancers and target groups allow
/// 32 characters, lower-case, no leading or trailing hyphen).
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
    Ok(())
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

fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
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

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !local.chars().any(|c| c.is_whitespace() || c == '@')
                && is_dns_name(domain)
                && domain.contains('.')
        }
        None => false,
    }
}

/// gitlab-ce release tags look like `19.4.1-ce.0`.
fn is_pinned_ce_tag(s: &str) -> bool {
    let Some((version, build)) = s.split_once("-ce.") else {
        return false;
    };
    let numbers: Vec<&str> = version.split('.').collect();
    numbers.len() == 3
        && numbers.iter().chain(std::iter::once(&build)).all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings { allowed_cidrs: Some(vec!["203.0.113.0/24".into()]), ..Default::default() }
    }

    #[test]
    fn defaults_validate() {
        let cfg = validate(&base()).expect("valid");
        assert_eq!(cfg.stack, "gitlab");
        assert_eq!(
            cfg.network,
            NetworkConfig::Create { vpc_cidr: "10.0.0.0/16".parse().unwrap(), nat: NatKind::Gateway }
        );
        assert_eq!((cfg.task_cpu, cfg.task_memory_mib), (2048, 6144));
        assert_ne!(cfg.gitlab_image_tag, "latest");
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
                    s.domain_name = Some("https://example.com".into());
                    s.sub_domain = Some("git".into());
                    s.hosted_zone_id = Some("Z123".into())
                }),
            ),
            (
                "sub_domain",
                Box::new(|s| {
                    s.domain_name = Some("example.com".into());
                    s.sub_domain = Some("-git".into());
                    s.hosted_zone_id = Some("Z123".into())
                }),
            ),
            (
                "hosted_zone_id",
                Box::new(|s| {
                    s.domain_name = Some("example.com".into());
                    s.sub_domain = Some("git".into());
                    s.hosted_zone_id = Some("zone1".into())
                }),
            ),
            ("gitlab_root_email", Box::new(|s| s.gitlab_root_email = Some("admin".into()))),
            ("gitlab_root_email", Box::new(|s| s.gitlab_root_email = Some("admin@localhost".into()))),
            ("gitlab_image_tag", Box::new(|s| s.gitlab_image_tag = Some("latest".into()))),
            ("gitlab_image_tag", Box::new(|s| s.gitlab_image_tag = Some("19.4.1-ee.0".into()))),
            ("gitlab_image_tag", Box::new(|s| s.gitlab_image_tag = Some("19.4".into()))),
            ("task_cpu", Box::new(|s| s.task_cpu = Some(3000))),
            ("task_memory_mib", Box::new(|s| s.task_memory_mib = Some(3000))),
            (
                "task_memory_mib",
                Box::new(|s| {
                    s.task_cpu = Some(512);
                    s.task_memory_mib = Some(2048)
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
    fn unknown_and_mistyped_keys_are_rejected() {
        let err = parse_toml("allowed_cidrs = [\"10.0.0.0/8\"]\nvpc_cdir = \"10.0.0.0/16\"\n").unwrap_err();
        assert!(err.contains("vpc_cdir"), "{err}");
        let err = parse_toml("task_cpu = \"2048\"\n").unwrap_err();
        assert!(err.contains("task_cpu"), "{err}");
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
}
