//! The monthly cost estimate `plan` prints: list prices, dated, with the assumptions stated.

use serde::Serialize;

use crate::config::{NatKind, NetworkConfig, StackConfig};

/// On-demand list prices, us-east-1, as AWS published them in 2025 (unchanged since, as far as
/// this tool knows; verify before budgeting). Other regions
/// differ (typically 0-30 % more); the estimate says so.
pub const PRICES_AS_OF: &str = "us-east-1 on-demand list prices from AWS's pricing pages, 2025; check before budgeting";
const HOURS: f64 = 730.0;
const FARGATE_VCPU_HOUR: f64 = 0.04048;
const FARGATE_GB_HOUR: f64 = 0.004445;
const ALB_HOUR: f64 = 0.0225;
const ALB_LCU_HOUR: f64 = 0.008;
const NLB_HOUR: f64 = 0.0225;
const NLB_NLCU_HOUR: f64 = 0.006;
const NAT_GATEWAY_HOUR: f64 = 0.045;
const NAT_GATEWAY_GB: f64 = 0.045;
const T4G_NANO_HOUR: f64 = 0.0042;
const GP3_GB_MONTH: f64 = 0.08;
const PUBLIC_IPV4_HOUR: f64 = 0.005;
const EFS_STANDARD_GB_MONTH: f64 = 0.30;
const EFS_ELASTIC_READ_GB: f64 = 0.03;
const EFS_ELASTIC_WRITE_GB: f64 = 0.06;
const BACKUP_EFS_WARM_GB_MONTH: f64 = 0.05;
const SECRET_MONTH: f64 = 0.40;
const LOGS_INGEST_GB: f64 = 0.50;

/// What a small team's GitLab uses in a month, for the usage-priced items.
const REPOSITORY_GB: f64 = 20.0;
const EFS_READ_GB: f64 = 50.0;
const EFS_WRITE_GB: f64 = 10.0;
const NAT_TRAFFIC_GB: f64 = 20.0;
const LOG_GB: f64 = 2.0;

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CostLine {
    pub item: String,
    pub assumption: String,
    pub usd_per_month: f64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Estimate {
    pub prices: &'static str,
    pub lines: Vec<CostLine>,
    pub total_usd_per_month: f64,
    /// Positive: what `use_nat_instance = true` would save; negative: what the NAT gateway would add.
    pub nat_instance_saving_usd_per_month: Option<f64>,
}

fn line(item: &str, assumption: String, usd: f64) -> CostLine {
    CostLine { item: item.to_string(), assumption, usd_per_month: (usd * 100.0).round() / 100.0 }
}

fn nat_lines(nat: NatKind) -> Vec<CostLine> {
    match nat {
        NatKind::Gateway => vec![line(
            "NAT gateway",
            format!("730 h x ${NAT_GATEWAY_HOUR} + {NAT_TRAFFIC_GB} GB x ${NAT_GATEWAY_GB}"),
            HOURS * NAT_GATEWAY_HOUR + NAT_TRAFFIC_GB * NAT_GATEWAY_GB,
        )],
        NatKind::Instance => vec![line(
            "NAT instance (t4g.nano)",
            format!("730 h x ${T4G_NANO_HOUR} + 8 GB gp3 x ${GP3_GB_MONTH}"),
            HOURS * T4G_NANO_HOUR + 8.0 * GP3_GB_MONTH,
        )],
    }
}

/// What the estimate depends on.
pub struct Inputs {
    pub cpu: u32,
    pub memory_mib: u32,
    /// The NAT of a VPC the tool creates; `None` for an imported VPC.
    pub nat: Option<NatKind>,
    pub ssh: bool,
}

impl From<&StackConfig> for Inputs {
    fn from(cfg: &StackConfig) -> Self {
        Inputs {
            cpu: cfg.task_cpu,
            memory_mib: cfg.task_memory_mib,
            nat: match cfg.network {
                NetworkConfig::Create { nat, .. } => Some(nat),
                NetworkConfig::Import { .. } => None,
            },
            ssh: cfg.ssh_port.is_some(),
        }
    }
}

pub fn estimate(cfg: &StackConfig) -> Estimate {
    estimate_of(&Inputs::from(cfg))
}

pub fn estimate_of(inputs: &Inputs) -> Estimate {
    let vcpu = f64::from(inputs.cpu) / 1024.0;
    let gb = f64::from(inputs.memory_mib) / 1024.0;
    let mut lines = vec![
        line("Fargate vCPU", format!("{vcpu} vCPU x 730 h x ${FARGATE_VCPU_HOUR}"), vcpu * HOURS * FARGATE_VCPU_HOUR),
        line("Fargate memory", format!("{gb} GB x 730 h x ${FARGATE_GB_HOUR}"), gb * HOURS * FARGATE_GB_HOUR),
        line(
            "Load balancer",
            format!("730 h x ${ALB_HOUR} + 1 LCU x 730 h x ${ALB_LCU_HOUR}"),
            HOURS * (ALB_HOUR + ALB_LCU_HOUR),
        ),
    ];
    if inputs.ssh {
        lines.push(line(
            "Network load balancer (SSH)",
            format!("730 h x ${NLB_HOUR} + 1 NLCU x 730 h x ${NLB_NLCU_HOUR}"),
            HOURS * (NLB_HOUR + NLB_NLCU_HOUR),
        ));
    }
    // Each load balancer has an address in each of two zones; a NAT has one more.
    let nat = inputs.nat;
    let mut addresses: f64 = if inputs.ssh { 4.0 } else { 2.0 };
    if let Some(nat) = nat {
        lines.extend(nat_lines(nat));
        addresses += 1.0;
    }
    lines.push(line(
        "Public IPv4 addresses",
        format!("{addresses} x 730 h x ${PUBLIC_IPV4_HOUR}"),
        addresses * HOURS * PUBLIC_IPV4_HOUR,
    ));
    lines.push(line(
        "EFS storage and I/O",
        format!(
            "{REPOSITORY_GB} GB x ${EFS_STANDARD_GB_MONTH}; {EFS_READ_GB} GB read, {EFS_WRITE_GB} GB written (elastic)"
        ),
        REPOSITORY_GB * EFS_STANDARD_GB_MONTH + EFS_READ_GB * EFS_ELASTIC_READ_GB + EFS_WRITE_GB * EFS_ELASTIC_WRITE_GB,
    ));
    lines.push(line(
        "EFS backups",
        format!("{REPOSITORY_GB} GB x ${BACKUP_EFS_WARM_GB_MONTH}"),
        REPOSITORY_GB * BACKUP_EFS_WARM_GB_MONTH,
    ));
    lines.push(line("Secrets Manager", "1 secret".into(), SECRET_MONTH));
    lines.push(line("CloudWatch Logs", format!("{LOG_GB} GB ingested x ${LOGS_INGEST_GB}"), LOG_GB * LOGS_INGEST_GB));
    let total = (lines.iter().map(|l| l.usd_per_month).sum::<f64>() * 100.0).round() / 100.0;
    let cost_of = |kind| nat_lines(kind).iter().map(|l| l.usd_per_month).sum::<f64>();
    let saving = nat.map(|n| {
        let s = cost_of(NatKind::Gateway) - cost_of(NatKind::Instance);
        ((if n == NatKind::Gateway { s } else { -s }) * 100.0).round() / 100.0
    });
    Estimate { prices: PRICES_AS_OF, lines, total_usd_per_month: total, nat_instance_saving_usd_per_month: saving }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, validate};

    fn cfg(nat_instance: bool) -> StackConfig {
        validate(&Settings {
            allowed_cidrs: Some(vec!["203.0.113.0/24".into()]),
            use_nat_instance: Some(nat_instance),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_default_stack_costs_what_the_price_list_says() {
        let e = estimate(&cfg(false));
        let fargate: f64 = e.lines.iter().filter(|l| l.item.starts_with("Fargate")).map(|l| l.usd_per_month).sum();
        assert!((fargate - (2.0 * 730.0 * 0.04048 + 6.0 * 730.0 * 0.004445)).abs() < 0.02, "{fargate}");
        assert!(e.lines.iter().any(|l| l.item == "NAT gateway"));
        let saving = e.nat_instance_saving_usd_per_month.unwrap();
        assert!(saving > 25.0 && saving < 35.0, "{saving}");
        let with_instance = estimate(&cfg(true));
        assert!((e.total_usd_per_month - with_instance.total_usd_per_month - saving).abs() < 0.05);
    }
}
