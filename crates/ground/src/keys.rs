//! The stack's vocabulary: every resource kind and record key in one place. Every area may use
//! it; it uses nothing of theirs. A step is named after the record it creates (or, for a step
//! that creates several records of one kind, after their group), so step names and record keys
//! are one namespace.

macro_rules! kinds {
    ($($variant:ident => $name:literal, $noun:literal;)*) => {
        /// What a record is, as the state file spells it (`ec2:vpc`) and as messages name it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $($variant),* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$variant => $name),* }
            }

            /// A short noun for messages: "VPC", "NAT gateway".
            pub fn noun(self) -> &'static str {
                match self { $(Kind::$variant => $noun),* }
            }

            pub fn parse(text: &str) -> Option<Kind> {
                match text { $($name => Some(Kind::$variant),)* _ => None }
            }
        }
    };
}

kinds! {
    Vpc => "ec2:vpc", "VPC";
    Subnet => "ec2:subnet", "subnet";
    InternetGateway => "ec2:internet-gateway", "internet gateway";
    RouteTable => "ec2:route-table", "route table";
    ElasticIp => "ec2:elastic-ip", "Elastic IP";
    NatGateway => "ec2:nat-gateway", "NAT gateway";
    Instance => "ec2:instance", "instance";
    SecurityGroup => "ec2:security-group", "security group";
    FileSystem => "efs:file-system", "file system";
    MountTarget => "efs:mount-target", "mount target";
    AccessPoint => "efs:access-point", "access point";
    Secret => "secretsmanager:secret", "secret";
    LogGroup => "logs:log-group", "log group";
    Role => "iam:role", "role";
    RolePolicy => "iam:role-policy", "role policy";
    LoadBalancer => "elbv2:load-balancer", "load balancer";
    TargetGroup => "elbv2:target-group", "target group";
    Listener => "elbv2:listener", "listener";
    Certificate => "acm:certificate", "certificate";
    DnsRecord => "route53:record", "DNS record";
    Function => "lambda:function", "function";
    Marker => "local:marker", "marker";
    Cluster => "ecs:cluster", "cluster";
    TaskDefinition => "ecs:task-definition", "task definition";
    Service => "ecs:service", "service";
    BackupVault => "backup:vault", "backup vault";
    SecretPolicy => "secretsmanager:resource-policy", "secret policy";
    FileSystemPolicy => "efs:file-system-policy", "file system policy";
    VaultPolicy => "backup:vault-access-policy", "vault access policy";
    Key => "kms:key", "KMS key";
    Bucket => "s3:bucket", "bucket";
    FlowLog => "ec2:flow-log", "flow log";
    NetworkAcl => "ec2:network-acl", "network ACL";
    WebAcl => "wafv2:web-acl", "web ACL";
    VaultLock => "backup:vault-lock", "vault lock";
    ScalableTarget => "application-autoscaling:scalable-target", "scalable target";
    ScheduledAction => "application-autoscaling:scheduled-action", "scheduled action";
    ScalingPolicy => "application-autoscaling:scaling-policy", "scaling policy";
    Alarm => "cloudwatch:alarm", "alarm";
    DbSubnetGroup => "rds:db-subnet-group", "DB subnet group";
    DbInstance => "rds:db-instance", "database instance";
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// Network.
pub const VPC: &str = "vpc";
pub const SUBNET_PUBLIC_A: &str = "subnet-public-a";
pub const SUBNET_PUBLIC_B: &str = "subnet-public-b";
pub const SUBNET_PRIVATE_A: &str = "subnet-private-a";
pub const SUBNET_PRIVATE_B: &str = "subnet-private-b";
pub const SUBNETS: [&str; 4] = [SUBNET_PUBLIC_A, SUBNET_PUBLIC_B, SUBNET_PRIVATE_A, SUBNET_PRIVATE_B];
pub const PUBLIC_SUBNETS: [&str; 2] = [SUBNET_PUBLIC_A, SUBNET_PUBLIC_B];
pub const PRIVATE_SUBNETS: [&str; 2] = [SUBNET_PRIVATE_A, SUBNET_PRIVATE_B];
pub const INTERNET_GATEWAY: &str = "internet-gateway";
pub const ROUTE_TABLE_PUBLIC: &str = "route-table-public";
pub const ROUTE_TABLE_PRIVATE: &str = "route-table-private";
pub const NAT_EIP: &str = "nat-eip";
pub const NAT_GATEWAY: &str = "nat-gateway";
pub const NAT_SECURITY_GROUP: &str = "nat-security-group";
pub const NAT_INSTANCE: &str = "nat-instance";
/// The subnet NAT lives in.
pub const NAT_SUBNET: &str = SUBNET_PUBLIC_A;

// Security groups.
pub const ALB_SECURITY_GROUP: &str = "alb-security-group";
pub const SERVICE_SECURITY_GROUP: &str = "service-security-group";
pub const INIT_SECURITY_GROUP: &str = "init-security-group";
pub const EFS_SECURITY_GROUP: &str = "efs-security-group";
pub const SSH_SECURITY_GROUP: &str = "ssh-security-group";

// Data.
pub const ROOT_SECRET: &str = "root-secret";
pub const FILE_SYSTEM: &str = "file-system";
pub const MOUNT_TARGET_A: &str = "mount-target-a";
pub const MOUNT_TARGET_B: &str = "mount-target-b";
pub const MOUNT_TARGETS: [&str; 2] = [MOUNT_TARGET_A, MOUNT_TARGET_B];
pub const INIT_ACCESS_POINT: &str = "init-access-point";
/// "This file system has been prepared": a record with nothing in AWS behind it.
pub const EFS_PREPARED: &str = "efs-prepared";
pub const INIT_FUNCTION: &str = "init-function";
pub const BACKUP_VAULT: &str = "backup-vault";
/// `hardening = "strict"`: the customer-managed key of the log groups and the secret, the
/// bucket of access and flow logs, the VPC's flow log, a network ACL per subnet tier, the web
/// ACL on the load balancer and its log group, the vault's lock.
pub const KEY: &str = "key";
pub const LOG_BUCKET: &str = "log-bucket";
pub const FLOW_LOG: &str = "flow-log";
pub const NETWORK_ACL_PUBLIC: &str = "network-acl-public";
pub const NETWORK_ACL_PRIVATE: &str = "network-acl-private";
pub const WEB_ACL: &str = "web-acl";
pub const WAF_LOG_GROUP: &str = "waf-log-group";
pub const VAULT_LOCK: &str = "vault-lock";
/// When GitLab runs (Application Auto Scaling on the service): office hours, the idle sleep
/// (its alarm and policy), and the function that wakes it on the first request.
pub const SCALABLE_TARGET: &str = "scalable-target";
pub const SCHEDULE_WAKE: &str = "schedule-wake";
pub const SCHEDULE_SLEEP: &str = "schedule-sleep";
pub const IDLE_POLICY: &str = "idle-policy";
pub const IDLE_ALARM: &str = "idle-alarm";
pub const WAKE_ROLE: &str = "wake-role";
pub const WAKE_LOG_GROUP: &str = "wake-log-group";
pub const WAKE_FUNCTION: &str = "wake-function";
pub const WAKE_TARGET_GROUP: &str = "wake-target-group";
/// `object_storage = true`: a bucket per object type GitLab stores in the consolidated form
/// (the record key, and the type's name in `gitlab.rb`).
pub const OBJECT_BUCKETS: [(&str, &str); 9] = [
    ("objects-artifacts", "artifacts"),
    ("objects-external-diffs", "external_diffs"),
    ("objects-lfs", "lfs"),
    ("objects-uploads", "uploads"),
    ("objects-packages", "packages"),
    ("objects-dependency-proxy", "dependency_proxy"),
    ("objects-terraform-state", "terraform_state"),
    ("objects-ci-secure-files", "ci_secure_files"),
    ("objects-pages", "pages"),
];

/// Whether a record key is one of GitLab's object buckets.
pub fn is_object_bucket(key: &str) -> bool {
    OBJECT_BUCKETS.iter().any(|(k, _)| *k == key)
}
/// `database = "rds"`: GitLab's PostgreSQL on RDS, the subnet group that places it in the
/// private subnets, and the security group that admits GitLab's tasks only.
pub const DB_INSTANCE: &str = "database";
pub const DB_SUBNET_GROUP: &str = "db-subnet-group";
pub const DB_SECURITY_GROUP: &str = "db-security-group";
/// Who may read the root secret: GitLab's execution role and the stack's admins only.
pub const ROOT_SECRET_POLICY: &str = "root-secret-policy";
/// TLS only, and only GitLab's task and the initializer mount the file system.
pub const FILE_SYSTEM_POLICY: &str = "file-system-policy";
/// Only the stack's admins delete or shorten its backups.
pub const BACKUP_VAULT_POLICY: &str = "backup-vault-policy";

// Logs.
pub const LOG_GROUP: &str = "log-group";
pub const INIT_LOG_GROUP: &str = "init-log-group";
pub const INSIGHTS_LOG_GROUP: &str = "insights-log-group";
/// Where ECS Exec sessions are logged: who ran what in GitLab's container.
pub const EXEC_LOG_GROUP: &str = "exec-log-group";

// Roles.
pub const EXECUTION_ROLE: &str = "execution-role";
pub const TASK_ROLE: &str = "task-role";
pub const INIT_ROLE: &str = "init-role";
pub const BACKUP_ROLE: &str = "backup-role";
/// The initializer's file-system rights, which exist only while it runs.
pub const INIT_ROLE_POLICY: &str = "init-role-policy";

// Load balancing and names.
pub const LOAD_BALANCER: &str = "load-balancer";
pub const TARGET_GROUP: &str = "target-group";
pub const LISTENER_HTTP: &str = "listener-http";
pub const LISTENER_HTTPS: &str = "listener-https";
pub const CERTIFICATE: &str = "certificate";
pub const CERTIFICATE_VALIDATION_RECORD: &str = "certificate-validation-record";
pub const DNS_ALIAS: &str = "dns-alias";
pub const SSH_LOAD_BALANCER: &str = "ssh-load-balancer";
pub const SSH_TARGET_GROUP: &str = "ssh-target-group";
pub const LISTENER_SSH: &str = "listener-ssh";
pub const DNS_SSH: &str = "dns-ssh";

// ECS.
pub const CLUSTER: &str = "cluster";
pub const TASK_DEFINITION: &str = "task-definition";
pub const SERVICE: &str = "service";

// Step names that are groups or checks rather than one record.
pub const STEP_SUBNETS: &str = "subnets";
pub const STEP_MOUNT_TARGETS: &str = "mount-targets";
pub const STEP_PREFLIGHT: &str = "preflight";
pub const STEP_ZONE_CHECK: &str = "zone-check";
pub const STEP_QUOTAS: &str = "quotas";

/// AWS names that derive from the stack's name, where more than one area needs them.
pub mod names {
    /// The EFS initializer's function.
    pub fn init_function(stack: &str) -> String {
        format!("{stack}-efs-init")
    }

    /// The ECS cluster.
    pub fn cluster(stack: &str) -> String {
        stack.to_string()
    }

    /// GitLab's RDS instance and its subnet group (RDS identifiers: letters, digits and
    /// single hyphens, which the stack's name already is).
    pub fn database(stack: &str) -> String {
        format!("{stack}-gitlab")
    }

    /// The function that wakes a sleeping GitLab.
    pub fn wake_function(stack: &str) -> String {
        format!("{stack}-wake")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(*kind));
            assert!(!kind.noun().is_empty());
        }
        assert_eq!(Kind::parse("ec2:nothing"), None);
    }
}
