//! The one tagging helper: the tags every resource of a stack carries, in each service's own tag
//! type, and the ownership judgment made from them.

use std::collections::HashMap;

use aws_sdk_ec2::types::{Filter, ResourceType, TagSpecification};

use crate::engine::Owner;

/// Tag on every resource the tool creates: what it may change or delete, and what discovery finds.
pub const STACK_TAG: &str = "gitlab-provision:stack";
/// The state key a resource was created for, so an interrupted create can be found again.
pub const RESOURCE_TAG: &str = "gitlab-provision:resource";
/// The region the stack lives in: account-wide resources (IAM roles) are told apart by it.
pub const REGION_TAG: &str = "gitlab-provision:region";
/// On a backup (a recovery point, a database snapshot): the GitLab version of its data.
pub const VERSION_TAG: &str = "gitlab-provision:gitlab-version";
/// On a file system's recovery point: the database snapshot taken with it (one backup).
pub const SNAPSHOT_TAG: &str = "gitlab-provision:database-snapshot";

/// The tags every resource of a stack carries.
#[derive(Debug, Clone)]
pub struct Tags {
    pub stack: String,
    pub region: String,
}

/// A service's own tag type, built from a key and a value.
pub trait SdkTag: Sized {
    fn make(key: String, value: String) -> Self;
}

/// A service's own tag type, read as a key and a value.
pub trait TagPair {
    fn pair(&self) -> (&str, &str);
}

macro_rules! sdk_tags {
    ($($ty:ty => |$k:ident, $v:ident| $build:expr, |$t:ident| $read:expr;)*) => {$(
        impl SdkTag for $ty {
            fn make($k: String, $v: String) -> Self {
                $build
            }
        }
        impl TagPair for $ty {
            fn pair(&self) -> (&str, &str) {
                let $t = self;
                $read
            }
        }
    )*};
}

sdk_tags! {
    aws_sdk_ec2::types::Tag => |k, v| Self::builder().key(k).value(v).build(),
        |t| (t.key().unwrap_or_default(), t.value().unwrap_or_default());
    aws_sdk_elasticloadbalancingv2::types::Tag => |k, v| Self::builder().key(k).value(v).build(),
        |t| (t.key().unwrap_or_default(), t.value().unwrap_or_default());
    aws_sdk_ecs::types::Tag => |k, v| Self::builder().key(k).value(v).build(),
        |t| (t.key().unwrap_or_default(), t.value().unwrap_or_default());
    aws_sdk_rds::types::Tag => |k, v| Self::builder().key(k).value(v).build(),
        |t| (t.key().unwrap_or_default(), t.value().unwrap_or_default());
    aws_sdk_secretsmanager::types::Tag => |k, v| Self::builder().key(k).value(v).build(),
        |t| (t.key().unwrap_or_default(), t.value().unwrap_or_default());
    // These builders report a missing key or value; both are always set here.
    aws_sdk_efs::types::Tag => |k, v| Self::builder().key(k).value(v).build().expect("key and value are set"),
        |t| (t.key(), t.value());
    aws_sdk_iam::types::Tag => |k, v| Self::builder().key(k).value(v).build().expect("key and value are set"),
        |t| (t.key(), t.value());
    aws_sdk_acm::types::Tag => |k, v| Self::builder().key(k).value(v).build().expect("key and value are set"),
        |t| (t.key(), t.value().unwrap_or_default());
    aws_sdk_kms::types::Tag => |k, v| Self::builder().tag_key(k).tag_value(v).build().expect("key and value are set"),
        |t| (t.tag_key(), t.tag_value());
    aws_sdk_s3::types::Tag => |k, v| Self::builder().key(k).value(v).build().expect("key and value are set"),
        |t| (t.key(), t.value());
    aws_sdk_wafv2::types::Tag => |k, v| Self::builder().key(k).value(v).build().expect("key and value are set"),
        |t| (t.key(), t.value());
}

impl Tags {
    pub fn name(&self, key: &str) -> String {
        format!("{}-{key}", self.stack)
    }

    pub fn pairs(&self, key: &str) -> Vec<(String, String)> {
        vec![
            ("Name".to_string(), self.name(key)),
            (STACK_TAG.to_string(), self.stack.clone()),
            (RESOURCE_TAG.to_string(), key.to_string()),
            (REGION_TAG.to_string(), self.region.clone()),
        ]
    }

    /// The tags in a service's own tag type.
    pub fn list<T: SdkTag>(&self, key: &str) -> Vec<T> {
        self.pairs(key).into_iter().map(|(k, v)| T::make(k, v)).collect()
    }

    /// The tags as a map, for services that take them so (Lambda, CloudWatch Logs, Backup).
    pub fn map(&self, key: &str) -> HashMap<String, String> {
        self.pairs(key).into_iter().collect()
    }

    /// EC2 tags applied atomically with the create call, so nothing exists untagged.
    pub fn ec2(&self, resource_type: ResourceType, key: &str) -> TagSpecification {
        TagSpecification::builder().resource_type(resource_type).set_tags(Some(self.list(key))).build()
    }

    /// Filters that find the EC2 resource created for `key` in this stack.
    pub fn ec2_filters(&self, key: &str) -> Vec<Filter> {
        vec![self.stack_filter(), Filter::builder().name(format!("tag:{RESOURCE_TAG}")).values(key).build()]
    }

    /// The filter that finds every EC2 resource of this stack.
    pub fn stack_filter(&self) -> Filter {
        Filter::builder().name(format!("tag:{STACK_TAG}")).values(&self.stack).build()
    }

    /// A name for AWS resources limited to `max` characters (load balancers and target groups
    /// allow 32): `<stack>-<suffix>`, or a shortened stack plus a stable hash when too long.
    pub fn short_name(&self, suffix: &str, max: usize) -> String {
        let full = if suffix.is_empty() { self.stack.clone() } else { format!("{}-{suffix}", self.stack) };
        if full.len() <= max {
            return full;
        }
        let hash = full.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        let tail = format!("-{:06x}-{suffix}", hash & 0xff_ffff);
        let keep = max.saturating_sub(tail.len());
        format!("{}{tail}", self.stack[..keep.min(self.stack.len())].trim_end_matches('-'))
    }

    /// Whose a resource carrying these tags is: this stack's when its stack tag names this stack
    /// and its region tag, if any, this region. Untagged or another stack's: never touched.
    pub fn owner<'a>(&self, tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Owner {
        let tags: HashMap<&str, &str> = tags.into_iter().collect();
        match (tags.get(STACK_TAG), tags.get(REGION_TAG)) {
            (None, _) => Owner::Foreign("it carries no gitlab-provision:stack tag".into()),
            (Some(stack), _) if *stack != self.stack => {
                Owner::Foreign(format!("it is tagged for stack {stack:?}, not {:?}", self.stack))
            }
            (Some(_), Some(region)) if *region != self.region => {
                Owner::Foreign(format!("it belongs to the stack of that name in {region}, not {}", self.region))
            }
            (Some(_), _) => Owner::Ours,
        }
    }

    /// [`Tags::owner`] for a service's own tag type.
    pub fn owner_of<T: TagPair>(&self, tags: &[T]) -> Owner {
        self.owner(tags.iter().map(TagPair::pair))
    }

    /// The state key of a resource of this stack, from its tags (`None` when not this stack's).
    pub fn key_of<T: TagPair>(&self, tags: &[T]) -> Option<String> {
        if self.owner_of(tags) != Owner::Ours {
            return None;
        }
        tags.iter().map(TagPair::pair).find(|(k, _)| *k == RESOURCE_TAG).map(|(_, v)| v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Tags {
        Tags { stack: "s1".into(), region: "us-east-1".into() }
    }

    #[test]
    fn short_names_fit_and_stay_distinct() {
        let short = Tags { stack: "gitlab".into(), region: "r".into() };
        assert_eq!(short.short_name("gitlab", 32), "gitlab-gitlab");
        let a = Tags { stack: "a".repeat(32), region: "r".into() }.short_name("gitlab", 32);
        let b = Tags { stack: format!("{}b", "a".repeat(31)), region: "r".into() }.short_name("gitlab", 32);
        assert!(a.len() <= 32 && b.len() <= 32, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.ends_with("-gitlab") && !a.contains("--"));
    }

    #[test]
    fn every_tag_set_names_the_stack_key_and_region() {
        let pairs = tags().pairs("vpc");
        assert!(pairs.contains(&("Name".into(), "s1-vpc".into())));
        assert!(pairs.contains(&(STACK_TAG.into(), "s1".into())));
        assert!(pairs.contains(&(RESOURCE_TAG.into(), "vpc".into())));
        assert!(pairs.contains(&(REGION_TAG.into(), "us-east-1".into())));
    }

    #[test]
    fn only_this_stacks_tags_in_this_region_make_it_ours() {
        let t = tags();
        assert_eq!(t.owner([(STACK_TAG, "s1")]), Owner::Ours);
        assert_eq!(t.owner([(STACK_TAG, "s1"), (REGION_TAG, "us-east-1")]), Owner::Ours);
        for foreign in [
            vec![],
            vec![("Name", "s1-vpc")],
            vec![(STACK_TAG, "s2")],
            vec![(STACK_TAG, "s1"), (REGION_TAG, "us-west-2")],
        ] {
            assert!(matches!(t.owner(foreign.clone()), Owner::Foreign(_)), "{foreign:?}");
        }
    }
}
