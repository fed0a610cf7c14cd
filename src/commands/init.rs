//! `init`: a commented gitlab-provision.toml, asking on a terminal for the few things that
//! matter (who may reach GitLab, HTTPS, the NAT flavour), from flags otherwise.

use std::path::PathBuf;

use crate::cli::{GlobalArgs, InitArgs};
use crate::config::{self, DEFAULT_CONFIG_FILE, DEFAULT_GITLAB_IMAGE_TAG};
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::printer::Printer;
use crate::state_bucket::{self, StateUrl};

/// What the file is written from.
struct Answers {
    allowed_cidrs: Vec<String>,
    domain: Option<(String, String, String)>,
    nat_instance: bool,
    /// `hardening = "strict"`: for an organisation under an audit.
    strict: bool,
}

fn quoted(items: &[String]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

fn render(a: &Answers) -> String {
    let domain = match &a.domain {
        Some((domain, sub, zone)) => {
            format!("domain_name = {domain:?}\nsub_domain = {sub:?}\nhosted_zone_id = {zone:?}\n")
        }
        None => {
            "# domain_name = \"example.com\"\n# sub_domain = \"gitlab\"\n# hosted_zone_id = \"Z0123456789ABCDEFGHIJ\"\n"
                .to_string()
        }
    };
    format!(
        r#"# gitlab-provision configuration. Every key is also a flag of `up` and `plan` (flags win);
# the README lists them all under "Configuration". `gitlab-provision plan` shows what `up` would do.

# The stack's name: AWS resource names derive from it (1-32 of a-z, 0-9, '-').
# stack = "gitlab"
# region = "eu-west-1"

# Who may reach GitLab: IPv4 networks, e.g. your offices and VPN. Avoid 0.0.0.0/0.
allowed_cidrs = [{cidrs}]

# HTTPS with a certificate from ACM, validated in a public Route 53 zone. Without it GitLab is
# served over plain HTTP, and the root password travels in clear text.
{domain}
# How GitLab reaches the internet: nat-instance (a t4g.nano, about $4/month), nat-gateway
# (managed by AWS, about $33/month plus data), or public-ip (no NAT at all).
egress = "{egress}"
# vpc_cidr = "10.0.0.0/16"              # or, to use a VPC you have: vpc_id = "vpc-..."
# availability_zones = ["eu-west-1a", "eu-west-1b"]

# GitLab itself. The version is pinned; `gitlab-provision upgrade` moves it along GitLab's
# upgrade path. Without gitlab_image_tag, `up` keeps the version that runs.
# gitlab_image_tag = "{tag}"
# gitlab_image = "gitlab/gitlab-ce"    # or an ECR mirror / pull-through cache
# gitlab_root_email = "admin@example.com"
# task_cpu = 2048
# task_memory_mib = 6144

# Git over SSH through a network load balancer.
# ssh = true
# ssh_port = 22

# Security. Every stack guards its root secret, file system and backups (the README's "Safety").
# "strict" adds, for an audit: VPC flow logs and load-balancer access logs to a bucket, a KMS
# key for the logs and the secret, 365-day logs, network ACLs, a WAF, a vault lock (about
# $10/month more; `plan` prices each).
hardening = "{hardening}"
# Who besides you may read the root password and delete backups (IAM role or user ARNs).
# admin_principals = ["arn:aws:iam::123456789012:role/GitLabAdmins"]
"#,
        cidrs = quoted(&a.allowed_cidrs),
        egress = if a.nat_instance { "nat-instance" } else { "nat-gateway" },
        tag = DEFAULT_GITLAB_IMAGE_TAG,
        hardening = if a.strict { "strict" } else { "default" },
    )
}

/// Asks until the answer passes the configuration's own checks of the keys it sets (at most
/// three times), showing each problem and its fix as it is given.
fn ask_valid<T>(
    printer: &Printer,
    ask: &mut dyn FnMut(&Printer) -> anyhow::Result<T>,
    settings_of: &dyn Fn(&T) -> config::Settings,
    keys: &[&str],
) -> Result<T, CliError> {
    for _ in 0..3 {
        let answer = ask(printer)?;
        let problems = match config::validate(&settings_of(&answer)) {
            Err(config::ConfigError::Invalid(problems)) => problems,
            _ => return Ok(answer),
        };
        let mine: Vec<&config::Invalid> =
            problems.iter().filter(|p| keys.iter().any(|k| p.key.starts_with(k))).collect();
        if mine.is_empty() {
            return Ok(answer);
        }
        for problem in mine {
            printer.warn(&format!("{}: {} ({})", problem.key, problem.problem, problem.help));
        }
    }
    Err(Diagnostic::new("no valid answer after three tries; nothing was written")
        .with_help("run `gitlab-provision init` again, or pass the values as flags")
        .into())
}

fn ask_answers(printer: &Printer) -> Result<Answers, CliError> {
    let allowed_cidrs = ask_valid(
        printer,
        &mut |p| {
            let cidrs = p.ask("Which networks may reach GitLab? (IPv4 CIDRs, comma-separated, e.g. 203.0.113.0/24)")?;
            Ok(cidrs.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect::<Vec<_>>())
        },
        &|cidrs: &Vec<String>| config::Settings { allowed_cidrs: Some(cidrs.clone()), ..Default::default() },
        &["allowed_cidrs"],
    )?;
    let domain = ask_valid(
        printer,
        &mut |p| {
            let domain =
                p.ask("A domain for HTTPS with a public Route 53 zone? (e.g. example.com; empty for plain HTTP)")?;
            if domain.is_empty() {
                return Ok(None);
            }
            let sub = p.ask("GitLab's name under it? (e.g. gitlab)")?;
            let zone = p.ask("The hosted zone's id? (from `aws route53 list-hosted-zones`)")?;
            Ok(Some((domain, sub, zone)))
        },
        &|domain: &Option<(String, String, String)>| match domain {
            Some((d, s, z)) => config::Settings {
                domain_name: Some(d.clone()),
                sub_domain: Some(s.clone()),
                hosted_zone_id: Some(z.clone()),
                ..Default::default()
            },
            None => config::Settings::default(),
        },
        &["domain_name", "sub_domain", "hosted_zone_id"],
    )?;
    let yes = |answer: String| matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes");
    // The default answer is the default egress, the NAT instance.
    let nat_instance =
        !yes(printer.ask("Use a NAT gateway (managed by AWS, about $30/month more) instead of a NAT instance? [y/N]")?);
    let strict = yes(printer.ask(
        "Will the account be audited? Strict hardening adds flow and access logs, a KMS key, network ACLs, a WAF (about $10/month) [y/N]",
    )?);
    Ok(Answers { allowed_cidrs, domain, nat_instance, strict })
}

/// `init --shared-state BUCKET[/PREFIX]`: the team's state bucket, created with every setting
/// it needs or adopted after checking them; then the line the config needs.
async fn shared_state(global: &GlobalArgs, target: &str) -> CliResult {
    let printer = Printer::new(global, false);
    let url = StateUrl::parse(&format!("s3://{}", target.trim_start_matches("s3://")), "--shared-state")?;
    let settings = crate::ops::stack::file_settings(global)?;
    let region = global.region.clone().or(settings.region);
    let (outcome, region) = state_bucket::ensure_bucket(&url, region.as_deref(), global.profile.as_deref()).await?;
    let verb = match outcome {
        state_bucket::BucketOutcome::Created => "created".to_string(),
        state_bucket::BucketOutcome::Adopted => "checked and adopted".to_string(),
        state_bucket::BucketOutcome::Repaired(missing) => format!("repaired ({})", missing.join("; ")),
    };
    printer.out(&format!(
        "{verb} bucket {} in {}: versioned, encrypted, public access blocked, TLS only",
        url.bucket, region
    ));
    printer.out(&format!(
        "next: put `state = \"{url}\"` in {} (or export GITLAB_PROVISION_STATE={url}); `gitlab-provision state push` moves an existing local state there",
        global.config.as_deref().unwrap_or(std::path::Path::new(DEFAULT_CONFIG_FILE)).display()
    ));
    Ok(ExitStatus::Success)
}

pub async fn run(global: &GlobalArgs, args: InitArgs) -> CliResult {
    if let Some(target) = &args.shared_state {
        return shared_state(global, target).await;
    }
    let path = global.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    if path.exists() && !args.force {
        return Err(Diagnostic::new(format!("{} already exists; it was left as it is", path.display()))
            .with_help("edit it, or pass --force to write a new one")
            .into());
    }
    let printer = Printer::new(global, false);
    let answers = if !args.allowed_cidrs.is_empty() {
        Answers { allowed_cidrs: args.allowed_cidrs, domain: None, nat_instance: true, strict: args.strict }
    } else if printer.can_ask() {
        ask_answers(&printer)?
    } else {
        return Err(Diagnostic::new(
            "init needs the networks allowed to reach GitLab, and there is no terminal to ask on",
        )
        .with_help("pass --allowed-cidr 203.0.113.0/24 (repeat for several)")
        .into());
    };
    let text = render(&answers);
    // What is written must be what `up` accepts.
    let settings = config::parse_toml(&text)
        .map_err(|(message, help)| CliError::usage(Diagnostic::new(message).with_help(help)))?;
    config::validate(&settings)?;
    std::fs::write(&path, text)?;
    printer.out(&format!("wrote {}; next: `gitlab-provision plan`, then `gitlab-provision up`", path.display()));
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_file_is_what_up_accepts() {
        for answers in [
            Answers { allowed_cidrs: vec!["203.0.113.0/24".into()], domain: None, nat_instance: true, strict: true },
            Answers {
                allowed_cidrs: vec!["203.0.113.0/24".into(), "198.51.100.7/32".into()],
                domain: Some(("example.com".into(), "git".into(), "Z0123".into())),
                nat_instance: false,
                strict: false,
            },
        ] {
            let settings = config::parse_toml(&render(&answers)).unwrap_or_else(|e| panic!("{e:?}"));
            let cfg = config::validate(&settings).unwrap();
            assert_eq!(cfg.allowed_cidrs.len(), answers.allowed_cidrs.len());
            assert_eq!(cfg.domain.is_some(), answers.domain.is_some());
            assert_eq!(cfg.strict(), answers.strict);
        }
    }
}
