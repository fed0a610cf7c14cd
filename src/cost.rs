//! The monthly cost estimate `plan` prints: list prices (data/prices.toml, dated, with their
//! sources), the usage they are multiplied by stated on every line, and the cheapest
//! configuration that keeps the same data safety as a one-line hint.

use serde::{Deserialize, Serialize};

use crate::config::{Architecture, Capacity, Egress, StackConfig};

const PRICES: &str = include_str!("../data/prices.toml");
/// Hours in an average month.
const HOURS: f64 = 730.0;

/// What a small team's GitLab uses in a month, for the usage-priced items.
const REPOSITORY_GB: f64 = 20.0;
const EFS_READ_GB: f64 = 50.0;
const EFS_WRITE_GB: f64 = 10.0;
const NAT_TRAFFIC_GB: f64 = 20.0;
/// With `object_storage`: artifacts, LFS objects, packages and uploads a small team keeps, a
/// tenth more in old versions (kept 30 days), and its requests in a month (CI writes artifacts,
/// clones read LFS objects).
const OBJECT_GB: f64 = 30.0;
const OBJECT_OLD_VERSION_SHARE: f64 = 0.1;
const OBJECT_WRITES_THOUSANDS: f64 = 100.0;
const OBJECT_READS_THOUSANDS: f64 = 1000.0;
/// GitLab's logs over a month of running around the clock.
const LOG_GB: f64 = 2.0;
const FLOW_LOG_GB: f64 = 5.0;
const ACCESS_LOG_GB: f64 = 1.0;
const MILLION_REQUESTS: f64 = 1.0;
/// A year's retention holds, averaged over its first year, six months of logs.
const MONTHS_HELD: f64 = 6.0;
/// The share of the file system's reads that users make (the rest, and every write, is GitLab's
/// own background work: Sidekiq, housekeeping, its bundled Prometheus, PostgreSQL's checkpoints,
/// which run only while GitLab does).
const USER_READ_SHARE: f64 = 0.5;
/// The share of the repositories' data that goes a month unread (moved to Infrequent Access),
/// and the share of reads that then come from it.
const COLD_SHARE: f64 = 0.6;
const COLD_READ_SHARE: f64 = 0.1;
/// Without a schedule, an idle-sleeping GitLab is assumed awake on working days for ten hours
/// of use plus its idle time.
const WORKDAY_HOURS: f64 = 10.0;
const WORKDAYS_PER_MONTH: f64 = 5.0 * 52.0 / 12.0;

#[derive(Debug, Deserialize)]
struct Prices {
    as_of: String,
    region: String,
    fargate: FargatePrices,
    network: NetworkPrices,
    storage: StoragePrices,
    services: ServicePrices,
    database: DatabasePrices,
}

#[derive(Debug, Deserialize)]
struct DatabasePrices {
    gp3_gb_month: f64,
    backup_gb_month: f64,
    instance_hour: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
struct FargatePrices {
    x86_vcpu_hour: f64,
    x86_gb_hour: f64,
    arm_vcpu_hour: f64,
    arm_gb_hour: f64,
    spot_discount: f64,
    spot_as_of: String,
}

#[derive(Debug, Deserialize)]
struct NetworkPrices {
    alb_hour: f64,
    alb_lcu_hour: f64,
    nlb_hour: f64,
    nlb_lcu_hour: f64,
    nat_gateway_hour: f64,
    nat_gateway_gb: f64,
    t4g_nano_hour: f64,
    gp3_gb_month: f64,
    public_ipv4_hour: f64,
}

#[derive(Debug, Deserialize)]
struct StoragePrices {
    efs_standard_gb_month: f64,
    efs_elastic_read_gb: f64,
    efs_elastic_write_gb: f64,
    efs_ia_gb_month: f64,
    efs_ia_read_gb: f64,
    backup_efs_warm_gb_month: f64,
    s3_standard_gb_month: f64,
    s3_put_thousand: f64,
    s3_get_thousand: f64,
}

#[derive(Debug, Deserialize)]
struct ServicePrices {
    secret_month: f64,
    logs_ingest_gb: f64,
    logs_storage_gb_month: f64,
    kms_key_month: f64,
    waf_acl_month: f64,
    waf_rule_month: f64,
    waf_million_requests: f64,
    vended_logs_s3_gb: f64,
}

fn prices() -> Prices {
    toml::from_str(PRICES).expect("data/prices.toml is checked by a test")
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CostLine {
    pub item: String,
    pub assumption: String,
    pub usd_per_month: f64,
}

/// A cheaper configuration with the same data safety, and what it saves.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Cheaper {
    /// The settings to change, as the configuration writes them.
    pub settings: Vec<String>,
    pub saving_usd_per_month: f64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Estimate {
    /// Where the prices come from, and when they were read.
    pub prices: String,
    pub lines: Vec<CostLine>,
    pub total_usd_per_month: f64,
    /// Hours a month GitLab's task runs (730: always).
    pub running_hours_per_month: f64,
    /// The cheapest configuration that keeps the same data safety, when it saves anything.
    pub cheaper: Option<Cheaper>,
}

fn round(usd: f64) -> f64 {
    (usd * 100.0).round() / 100.0
}

fn line(item: &str, assumption: String, usd: f64) -> CostLine {
    CostLine { item: item.to_string(), assumption, usd_per_month: round(usd) }
}

/// What the estimate depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub cpu: u32,
    pub memory_mib: u32,
    pub architecture: Architecture,
    pub capacity: Capacity,
    /// The egress of a VPC the tool creates; `None` for an imported VPC.
    pub egress: Option<Egress>,
    pub ssh: bool,
    pub strict: bool,
    /// Hours a month GitLab runs by its schedule (`None`: always).
    pub scheduled_hours: Option<f64>,
    /// Minutes without a request before it sleeps.
    pub idle_sleep_minutes: Option<u32>,
    pub efs_ia_days: Option<u32>,
    pub object_storage: bool,
    /// GitLab's PostgreSQL on RDS (`None`: bundled, on EFS).
    pub database: Option<crate::config::DatabaseSettings>,
}

impl From<&StackConfig> for Inputs {
    fn from(cfg: &StackConfig) -> Self {
        Inputs {
            cpu: cfg.task_cpu,
            memory_mib: cfg.task_memory_mib,
            architecture: cfg.architecture().0,
            capacity: cfg.capacity,
            egress: cfg.egress(),
            ssh: cfg.ssh_port.is_some(),
            strict: cfg.strict(),
            scheduled_hours: cfg.schedule.as_ref().map(|s| s.running_hours_per_month()),
            idle_sleep_minutes: cfg.idle_sleep_minutes,
            efs_ia_days: cfg.efs_ia_days,
            object_storage: cfg.object_storage,
            database: cfg.database.clone(),
        }
    }
}

impl Inputs {
    /// Hours a month the task runs, and why.
    fn running(&self) -> (f64, String) {
        match (self.scheduled_hours, self.idle_sleep_minutes) {
            (Some(hours), _) => (hours, format!("{hours:.0} h by the schedule")),
            (None, Some(idle)) => {
                let hours = (WORKDAY_HOURS + f64::from(idle) / 60.0) * WORKDAYS_PER_MONTH;
                (hours, format!("{hours:.0} h (awake {WORKDAY_HOURS} h of use + {idle} min idle, on working days)"))
            }
            (None, None) => (HOURS, "730 h".to_string()),
        }
    }
}

pub fn estimate(cfg: &StackConfig) -> Estimate {
    let inputs = Inputs::from(cfg);
    let mut estimate = estimate_of(&inputs);
    estimate.cheaper = cheaper(&inputs, estimate.total_usd_per_month);
    estimate
}

fn fargate_lines(p: &Prices, i: &Inputs, hours: f64, when: &str) -> Vec<CostLine> {
    let (vcpu, gb) = (f64::from(i.cpu) / 1024.0, f64::from(i.memory_mib) / 1024.0);
    let (vcpu_hour, gb_hour, arch) = match i.architecture {
        Architecture::Arm64 => (p.fargate.arm_vcpu_hour, p.fargate.arm_gb_hour, "Graviton"),
        Architecture::X86_64 => (p.fargate.x86_vcpu_hour, p.fargate.x86_gb_hour, "x86_64"),
    };
    let (factor, spot) = match i.capacity {
        Capacity::Spot => (1.0 - p.fargate.spot_discount, format!(", Spot -{:.0}%", p.fargate.spot_discount * 100.0)),
        Capacity::OnDemand => (1.0, String::new()),
    };
    vec![
        line(
            &format!("Fargate vCPU ({arch}{spot})"),
            format!("{vcpu} vCPU x {when} x ${vcpu_hour}"),
            vcpu * hours * vcpu_hour * factor,
        ),
        line(
            &format!("Fargate memory ({arch}{spot})"),
            format!("{gb} GB x {when} x ${gb_hour}"),
            gb * hours * gb_hour * factor,
        ),
    ]
}

fn network_lines(p: &Prices, i: &Inputs, hours: f64) -> Vec<CostLine> {
    let n = &p.network;
    // Load balancers bill every hour; their capacity units only while GitLab serves.
    let mut lines = vec![line(
        "Load balancer",
        format!("730 h x ${} + 1 LCU x {hours:.0} h x ${}", n.alb_hour, n.alb_lcu_hour),
        HOURS * n.alb_hour + hours * n.alb_lcu_hour,
    )];
    if i.ssh {
        lines.push(line(
            "Network load balancer (SSH)",
            format!("730 h x ${} + 1 NLCU x {hours:.0} h x ${}", n.nlb_hour, n.nlb_lcu_hour),
            HOURS * n.nlb_hour + hours * n.nlb_lcu_hour,
        ));
    }
    match i.egress {
        Some(Egress::NatGateway) => lines.push(line(
            "NAT gateway",
            format!("730 h x ${} + {NAT_TRAFFIC_GB} GB x ${}", n.nat_gateway_hour, n.nat_gateway_gb),
            HOURS * n.nat_gateway_hour + NAT_TRAFFIC_GB * n.nat_gateway_gb,
        )),
        Some(Egress::NatInstance) => lines.push(line(
            "NAT instance (t4g.nano)",
            format!("730 h x ${} + 8 GB gp3 x ${}", n.t4g_nano_hour, n.gp3_gb_month),
            HOURS * n.t4g_nano_hour + 8.0 * n.gp3_gb_month,
        )),
        Some(Egress::PublicIp) | None => {}
    }
    // Each load balancer has an address in each of two zones; a NAT one; a task with its own
    // address (public-ip egress) one while it runs.
    let always = if i.ssh { 4.0 } else { 2.0 }
        + if matches!(i.egress, Some(Egress::NatGateway | Egress::NatInstance)) { 1.0 } else { 0.0 };
    let task = if i.egress == Some(Egress::PublicIp) { hours } else { 0.0 };
    lines.push(line(
        "Public IPv4 addresses",
        format!(
            "{always} x 730 h{} x ${}",
            if task > 0.0 { format!(" + the task's {task:.0} h") } else { String::new() },
            n.public_ipv4_hour
        ),
        (always * HOURS + task) * n.public_ipv4_hour,
    ));
    lines
}

fn storage_lines(p: &Prices, i: &Inputs, hours: f64) -> Vec<CostLine> {
    let s = &p.storage;
    let running = hours / HOURS;
    let (read, written) = (EFS_READ_GB * (USER_READ_SHARE + (1.0 - USER_READ_SHARE) * running), EFS_WRITE_GB * running);
    let io = read * s.efs_elastic_read_gb + written * s.efs_elastic_write_gb;
    let efs = match i.efs_ia_days {
        None => line(
            "EFS storage and I/O",
            format!(
                "{REPOSITORY_GB} GB x ${}; {read:.0} GB read, {written:.0} GB written (elastic)",
                s.efs_standard_gb_month
            ),
            REPOSITORY_GB * s.efs_standard_gb_month + io,
        ),
        Some(days) => {
            let (cold, hot) = (REPOSITORY_GB * COLD_SHARE, REPOSITORY_GB * (1.0 - COLD_SHARE));
            let cold_reads = EFS_READ_GB * COLD_READ_SHARE;
            line(
                &format!("EFS storage and I/O (Infrequent Access after {days} days)"),
                format!(
                    "{hot} GB x ${} + {cold} GB unread x ${} + {cold_reads} GB read from it x ${}; elastic I/O",
                    s.efs_standard_gb_month, s.efs_ia_gb_month, s.efs_ia_read_gb
                ),
                hot * s.efs_standard_gb_month + cold * s.efs_ia_gb_month + cold_reads * s.efs_ia_read_gb + io,
            )
        }
    };
    let mut lines = vec![
        efs,
        line(
            "EFS backups",
            format!("{REPOSITORY_GB} GB x ${}", s.backup_efs_warm_gb_month),
            REPOSITORY_GB * s.backup_efs_warm_gb_month,
        ),
    ];
    if i.object_storage {
        let stored = OBJECT_GB * (1.0 + OBJECT_OLD_VERSION_SHARE);
        lines.push(line(
            "S3 object storage",
            format!(
                "{stored:.0} GB x ${} (old versions included); {:.1} M writes x ${}/1000, {:.0} M reads x ${}/1000; the same on EFS: ${:.2}",
                s.s3_standard_gb_month,
                OBJECT_WRITES_THOUSANDS / 1000.0,
                s.s3_put_thousand,
                OBJECT_READS_THOUSANDS / 1000.0,
                s.s3_get_thousand,
                OBJECT_GB * s.efs_standard_gb_month
            ),
            stored * s.s3_standard_gb_month
                + OBJECT_WRITES_THOUSANDS * s.s3_put_thousand
                + OBJECT_READS_THOUSANDS * s.s3_get_thousand,
        ));
    }
    lines
}

fn service_lines(p: &Prices, i: &Inputs, hours: f64) -> Vec<CostLine> {
    let v = &p.services;
    // GitLab writes logs while it runs.
    let logs = LOG_GB * hours / HOURS;
    let mut lines = vec![
        line("Secrets Manager", "1 secret".into(), v.secret_month),
        line(
            "CloudWatch Logs",
            format!(
                "{logs:.1} GB ingested x ${}; kept 365 days: {:.1} GB stored x ${}",
                v.logs_ingest_gb,
                logs * MONTHS_HELD,
                v.logs_storage_gb_month
            ),
            logs * v.logs_ingest_gb + logs * MONTHS_HELD * v.logs_storage_gb_month,
        ),
        line("KMS key", format!("1 key x ${}", v.kms_key_month), v.kms_key_month),
    ];
    if i.strict {
        let stored = (FLOW_LOG_GB + ACCESS_LOG_GB) * MONTHS_HELD;
        lines.push(line(
            "AWS WAF (strict)",
            format!(
                "1 web ACL x ${} + 1 rule group x ${} + {MILLION_REQUESTS} M requests x ${}",
                v.waf_acl_month, v.waf_rule_month, v.waf_million_requests
            ),
            v.waf_acl_month + v.waf_rule_month + MILLION_REQUESTS * v.waf_million_requests,
        ));
        lines.push(line(
            "Flow and access logs in S3 (strict)",
            format!(
                "{FLOW_LOG_GB} GB flow logs x ${}; {stored} GB stored x ${}",
                v.vended_logs_s3_gb, p.storage.s3_standard_gb_month
            ),
            FLOW_LOG_GB * v.vended_logs_s3_gb + stored * p.storage.s3_standard_gb_month,
        ));
    }
    lines
}

pub fn estimate_of(i: &Inputs) -> Estimate {
    let p = prices();
    let (hours, when) = i.running();
    let mut lines = fargate_lines(&p, i, hours, &when);
    lines.extend(network_lines(&p, i, hours));
    lines.extend(storage_lines(&p, i, hours));
    lines.extend(service_lines(&p, i, hours));
    lines.extend(database_lines(&p, i));
    let total = round(lines.iter().map(|l| l.usd_per_month).sum::<f64>());
    let spot = if i.capacity == Capacity::Spot {
        format!("; Spot's discount as of {}", p.fargate.spot_as_of)
    } else {
        String::new()
    };
    Estimate {
        prices: format!(
            "{} on-demand list prices as of {} (data/prices.toml){spot}; check before budgeting",
            p.region, p.as_of
        ),
        lines,
        total_usd_per_month: total,
        running_hours_per_month: round(hours),
        cheaper: None,
    }
}

/// The RDS instance around the clock (it does not sleep with GitLab), its storage, and its
/// automated backups (free up to the provisioned storage: a small database's week of backups
/// fits); Multi-AZ doubles the instance and the storage. Its password is a second secret.
fn database_lines(p: &Prices, i: &Inputs) -> Vec<CostLine> {
    let Some(db) = &i.database else { return vec![] };
    let d = &p.database;
    let copies = if db.multi_az { 2.0 } else { 1.0 };
    let az = if db.multi_az { " x 2 (Multi-AZ)" } else { "" };
    let instance = match d.instance_hour.get(&db.instance_class) {
        Some(hourly) => line(
            "RDS PostgreSQL instance",
            format!("{}: 730 h x ${hourly}{az} (runs while GitLab sleeps)", db.instance_class),
            HOURS * hourly * copies,
        ),
        None => line(
            "RDS PostgreSQL instance",
            format!(
                "{}: not in data/prices.toml, counted as $0: see aws.amazon.com/rds/postgresql/pricing",
                db.instance_class
            ),
            0.0,
        ),
    };
    vec![
        instance,
        line(
            "RDS storage",
            format!("{} GB gp3 x ${}{az}", db.storage_gb, d.gp3_gb_month),
            f64::from(db.storage_gb) * d.gp3_gb_month * copies,
        ),
        line(
            "RDS backups",
            format!(
                "{} days of automated backups: free up to {} GB (the provisioned storage), then ${}/GB-month",
                db.backup_retention_days, db.storage_gb, d.backup_gb_month
            ),
            0.0,
        ),
        line("Secrets Manager (the database's password)", "1 secret, RDS's".into(), p.services.secret_month),
    ]
}

/// The cheapest configuration with the same data safety: no NAT (the task gets a public
/// address its group still closes), Graviton where the image has it, and office hours if none
/// are set. Spot is not among them: a stop with two minutes' notice is a risk to writes in
/// flight, which the user takes knowingly.
fn cheaper(i: &Inputs, total: f64) -> Option<Cheaper> {
    let mut best = i.clone();
    let mut settings = Vec::new();
    if matches!(i.egress, Some(Egress::NatGateway | Egress::NatInstance)) {
        best.egress = Some(Egress::PublicIp);
        settings.push("egress = \"public-ip\"".to_string());
    }
    if i.scheduled_hours.is_none() && i.idle_sleep_minutes.is_none() {
        let office = crate::schedule::OfficeHours::from_setting(&crate::schedule::ScheduleSetting {
            days: "Mon-Fri".into(),
            start: "07:30".into(),
            stop: "19:30".into(),
            timezone: "UTC".into(),
        })
        .ok()?;
        best.scheduled_hours = Some(office.running_hours_per_month());
        settings.push("schedule = \"Mon-Fri 07:30-19:30 <your time zone>\"".to_string());
    }
    let saving = round(total - estimate_of(&best).total_usd_per_month);
    (saving >= 1.0).then_some(Cheaper { settings, saving_usd_per_month: saving })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, validate};

    fn cfg(change: impl FnOnce(&mut Settings)) -> StackConfig {
        let mut s = Settings { allowed_cidrs: Some(vec!["203.0.113.0/24".into()]), ..Default::default() };
        change(&mut s);
        validate(&s).unwrap()
    }

    fn item(e: &Estimate, prefix: &str) -> f64 {
        e.lines.iter().filter(|l| l.item.starts_with(prefix)).map(|l| l.usd_per_month).sum()
    }

    #[test]
    fn the_default_stack_costs_what_the_price_list_says() {
        // Graviton (19.4 has arm64 images), the NAT instance, always on.
        let e = estimate(&cfg(|_| {}));
        assert!((item(&e, "Fargate") - (2.0 * 730.0 * 0.03238 + 6.0 * 730.0 * 0.00356)).abs() < 0.02, "{e:#?}");
        assert!((item(&e, "NAT instance") - (730.0 * 0.0042 + 8.0 * 0.08)).abs() < 0.01);
        assert!((item(&e, "Public IPv4") - 3.0 * 730.0 * 0.005).abs() < 0.01);
        assert!((item(&e, "Load balancer") - 730.0 * (0.0225 + 0.008)).abs() < 0.01);
        let by_hand = 47.27 + 15.59 + 22.27 + 3.71 + 10.95 + 8.10 + 1.00 + 0.40 + 1.36 + 1.00;
        assert!((e.total_usd_per_month - by_hand).abs() < 0.05, "{} vs {by_hand}", e.total_usd_per_month);
        assert!(e.total_usd_per_month <= 115.0);
    }

    #[test]
    fn the_database_on_rds_is_priced_around_the_clock_and_multi_az_doubles_it() {
        let bundled = estimate(&cfg(|_| {}));
        let rds = estimate(&cfg(|s| s.database = Some(crate::config::Database::Rds)));
        assert!((item(&rds, "RDS PostgreSQL instance") - 730.0 * 0.065).abs() < 0.01, "{rds:#?}");
        assert!((item(&rds, "RDS storage") - 20.0 * 0.115).abs() < 0.01);
        let added = rds.total_usd_per_month - bundled.total_usd_per_month;
        assert!((added - (730.0 * 0.065 + 20.0 * 0.115 + 0.40)).abs() < 0.05, "{added}");
        // It does not sleep with GitLab.
        let office = estimate(&cfg(|s| {
            s.database = Some(crate::config::Database::Rds);
            s.schedule = Some(crate::schedule::parse_flag("Mon-Fri 07:30-19:30 Europe/Berlin").unwrap())
        }));
        assert!((item(&office, "RDS PostgreSQL instance") - 730.0 * 0.065).abs() < 0.01);
        let multi = estimate(&cfg(|s| {
            s.database = Some(crate::config::Database::Rds);
            s.db_multi_az = Some(true);
            s.db_storage_gb = Some(100)
        }));
        assert!((item(&multi, "RDS PostgreSQL instance") - 2.0 * 730.0 * 0.065).abs() < 0.01);
        assert!((item(&multi, "RDS storage") - 2.0 * 100.0 * 0.115).abs() < 0.01);
        // A class the price list lacks is counted as nothing and says so.
        let unknown = estimate(&cfg(|s| {
            s.database = Some(crate::config::Database::Rds);
            s.db_instance_class = Some("db.x2g.16xlarge".into())
        }));
        let line = unknown.lines.iter().find(|l| l.item == "RDS PostgreSQL instance").unwrap();
        assert!(line.usd_per_month == 0.0 && line.assumption.contains("not in data/prices.toml"), "{line:?}");
        eprintln!("rds total {} multi-az {}", rds.total_usd_per_month, multi.total_usd_per_month);
    }

    #[test]
    fn each_option_is_priced_as_computed_by_hand() {
        let x86_gateway = estimate(&cfg(|s| {
            s.cpu_architecture = Some(Architecture::X86_64);
            s.egress = Some(Egress::NatGateway)
        }));
        assert!((item(&x86_gateway, "Fargate") - (2.0 * 730.0 * 0.04048 + 6.0 * 730.0 * 0.004445)).abs() < 0.02);
        assert!((item(&x86_gateway, "NAT gateway") - (730.0 * 0.045 + 20.0 * 0.045)).abs() < 0.01);
        // Office hours: 12 h 10 min on 5 days; Fargate, capacity units and logs scale with them.
        let office =
            cfg(|s| s.schedule = Some(crate::schedule::parse_flag("Mon-Fri 07:30-19:30 Europe/Berlin").unwrap()));
        let e = estimate(&office);
        let hours = (12.0 + 10.0 / 60.0) * 5.0 * 52.0 / 12.0;
        assert!((e.running_hours_per_month - hours).abs() < 0.01);
        assert!((item(&e, "Fargate") - hours * (2.0 * 0.03238 + 6.0 * 0.00356)).abs() < 0.02);
        assert!(e.total_usd_per_month <= 70.0, "{}", e.total_usd_per_month);
        // ... and without a NAT: the task's address only while it runs.
        let public = estimate(&cfg(|s| {
            s.schedule = Some(crate::schedule::parse_flag("Mon-Fri 07:30-19:30 Europe/Berlin").unwrap());
            s.egress = Some(Egress::PublicIp)
        }));
        assert!((item(&public, "Public IPv4") - (2.0 * 730.0 + hours) * 0.005).abs() < 0.01);
        assert!(public.total_usd_per_month <= 60.0, "{}", public.total_usd_per_month);
        // Spot: x86 at 32 % of the price.
        let spot = estimate(&cfg(|s| s.capacity = Some(Capacity::Spot)));
        assert!((item(&spot, "Fargate") - 0.32 * (2.0 * 730.0 * 0.04048 + 6.0 * 730.0 * 0.004445)).abs() < 0.02);
        // Infrequent Access: 60 % of 20 GB at $0.016 and a tenth of the reads at $0.01.
        let ia = estimate(&cfg(|s| s.efs_infrequent_access_after = Some("30d".into())));
        let efs = 8.0 * 0.30 + 12.0 * 0.016 + 5.0 * 0.01 + 50.0 * 0.03 + 10.0 * 0.06;
        assert!((item(&ia, "EFS storage") - efs).abs() < 0.01);
        // Object storage: 33 GB (a tenth in old versions), 100,000 writes and a million reads.
        let objects = estimate(&cfg(|s| s.object_storage = Some(true)));
        let s3 = 33.0 * 0.023 + 100.0 * 0.005 + 1000.0 * 0.0004;
        assert!((item(&objects, "S3 object storage") - s3).abs() < 0.01, "{objects:#?}");
        assert_eq!(item(&estimate(&cfg(|_| {})), "S3"), 0.0);
    }

    #[test]
    fn the_hint_names_the_cheapest_configuration_with_the_same_data_safety() {
        let e = estimate(&cfg(|_| {}));
        let cheaper = e.cheaper.as_ref().unwrap();
        assert!(
            cheaper.settings.iter().any(|s| s.contains("public-ip"))
                && cheaper.settings.iter().any(|s| s.contains("schedule"))
        );
        assert!(cheaper.saving_usd_per_month > 40.0, "{cheaper:?}");
        let already = estimate(&cfg(|s| {
            s.egress = Some(Egress::PublicIp);
            s.schedule = Some(crate::schedule::parse_flag("Mon-Fri 07:30-19:30 UTC").unwrap())
        }));
        assert!(already.cheaper.is_none(), "{:?}", already.cheaper);
    }

    #[test]
    fn strict_hardening_is_priced_item_by_item() {
        let default = estimate(&cfg(|_| {}));
        let strict = estimate(&cfg(|s| s.hardening = Some(crate::config::Hardening::Strict)));
        let added: Vec<&CostLine> = strict.lines.iter().filter(|l| l.item.ends_with("(strict)")).collect();
        assert_eq!(added.len(), 2, "{added:?}");
        let waf = added.iter().find(|l| l.item.starts_with("AWS WAF")).unwrap();
        assert!((waf.usd_per_month - 6.60).abs() < 0.01, "{waf:?}");
        let sum: f64 = added.iter().map(|l| l.usd_per_month).sum();
        assert!((strict.total_usd_per_month - default.total_usd_per_month - sum).abs() < 0.02);
    }
}
