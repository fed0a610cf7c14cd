//! The one decision: given what the state records, what AWS shows and what the configuration
//! wants, what happens to a resource. `up` acts on it; `plan` prints it. Pure: no I/O.

use std::fmt;

use serde::Serialize;

use super::record::{Desired, members, shown};
use crate::state::{RecordStatus, ResourceRecord};

/// Whose a live resource is, as far as one read could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// It carries this stack's tags (or, for kinds without tags, matches what the stack wrote).
    Ours,
    /// Untagged or tagged for another stack: never changed or deleted.
    Foreign(String),
    /// The read did not include tags; checked before anything changes it.
    Unchecked,
}

/// What a live read found.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// It exists; `drift` lists what differs from the record (empty when all is as recorded).
    Present {
        summary: String,
        drift: Vec<String>,
        owner: Owner,
    },
    Missing,
}

impl Live {
    pub fn present(summary: impl Into<String>, drift: Vec<String>) -> Live {
        Live::Present { summary: summary.into(), drift, owner: Owner::Unchecked }
    }

    /// The read with whose it is, asked only when it exists.
    pub async fn checked(
        self,
        owner: impl std::future::Future<Output = anyhow::Result<Owner>>,
    ) -> anyhow::Result<Live> {
        match self {
            Live::Missing => Ok(Live::Missing),
            present => Ok(present.owned_by(owner.await?)),
        }
    }

    pub fn owned_by(self, owner: Owner) -> Live {
        match self {
            Live::Present { summary, drift, .. } => Live::Present { summary, drift, owner },
            Live::Missing => Live::Missing,
        }
    }
}

/// One difference between the record (or the live resource) and what is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Change {
    Setting {
        setting: String,
        from: String,
        to: String,
    },
    /// A setting that is a set: what is added and what is removed.
    Members {
        setting: String,
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// Seen live, differs from the record (changed outside gitlab-provision).
    Drift {
        drift: String,
    },
}

/// Longer values (policy documents) are shown as "changed".
const LONG_VALUE: usize = 80;

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A policy document is not read in a progress line: that it changed is the news.
            Change::Setting { setting, from, to } if from.len().max(to.len()) > LONG_VALUE => {
                write!(f, "{setting} changed")
            }
            Change::Setting { setting, from, to } => write!(f, "{setting} {from} -> {to}"),
            Change::Members { setting, added, removed } => {
                let members: Vec<String> =
                    added.iter().map(|a| format!("+{a}")).chain(removed.iter().map(|r| format!("-{r}"))).collect();
                write!(f, "{setting} {}", members.join(" "))
            }
            Change::Drift { drift } => f.write_str(drift),
        }
    }
}

/// What `up` does with one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Keep,
    /// Retained by `down --keep-data`: part of the stack again, converged if anything differs.
    Attach(Vec<Change>),
    Update(Vec<Change>),
    /// A setting that cannot change in place differs: delete it, then create it anew.
    Replace(Vec<Change>),
    /// An earlier run recorded the intent: adopt what it created, or create it.
    Resume,
    /// Recorded, but deleted outside gitlab-provision.
    Recreate,
    /// It exists but is not this stack's: left alone, and the step fails saying why.
    Refuse(String),
}

impl Action {
    /// The word `plan` prints.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Keep => "keep",
            Action::Attach(_) => "attach",
            Action::Update(_) => "update",
            Action::Replace(_) => "replace",
            Action::Resume => "resume",
            Action::Recreate => "re-create",
            Action::Refuse(_) => "refuse",
        }
    }

    pub fn changes(&self) -> &[Change] {
        match self {
            Action::Attach(c) | Action::Update(c) | Action::Replace(c) => c,
            _ => &[],
        }
    }

    pub fn changes_anything(&self) -> bool {
        !matches!(self, Action::Keep)
    }
}

/// Decides what happens to `desired` given its `record` and what a live read found (`None`:
/// not read, e.g. it failed; judged from the record alone).
pub fn decide(record: Option<&ResourceRecord>, live: Option<&Live>, desired: &Desired) -> Action {
    let Some(record) = record else { return Action::Create };
    match record.status {
        RecordStatus::Imported => return Action::Keep,
        RecordStatus::Pending => return Action::Resume,
        RecordStatus::Created | RecordStatus::Retained => {}
    }
    let drift = match live {
        Some(Live::Missing) => return Action::Recreate,
        Some(Live::Present { owner: Owner::Foreign(why), .. }) => return Action::Refuse(why.clone()),
        Some(Live::Present { drift, .. }) => drift.as_slice(),
        None => &[],
    };
    let mut changes: Vec<Change> = desired
        .attrs
        .iter()
        .filter(|(name, value)| {
            let recorded = desired.recorded(record, name);
            if desired.sets.contains(&name.as_str()) {
                let set =
                    |v: Option<&serde_json::Value>| members(v).into_iter().collect::<std::collections::BTreeSet<_>>();
                set(recorded.as_ref()) != set(Some(value))
            } else {
                recorded.as_ref() != Some(value)
            }
        })
        .map(|(name, value)| {
            let recorded = desired.recorded(record, name);
            if desired.sets.contains(&name.as_str()) {
                let members = |v: Option<&serde_json::Value>| -> std::collections::BTreeSet<String> {
                    members(v).into_iter().collect()
                };
                let (before, after) = (members(recorded.as_ref()), members(Some(value)));
                return Change::Members {
                    setting: name.clone(),
                    added: after.difference(&before).cloned().collect(),
                    removed: before.difference(&after).cloned().collect(),
                };
            }
            Change::Setting {
                setting: name.clone(),
                from: recorded.as_ref().map_or_else(|| "unset".to_string(), shown),
                to: shown(value),
            }
        })
        .collect();
    let replace = changes
        .iter()
        .any(|c| matches!(c, Change::Setting { setting, .. } if desired.replace_on.contains(&setting.as_str())));
    changes.extend(drift.iter().map(|d| Change::Drift { drift: d.clone() }));
    if replace {
        Action::Replace(changes)
    } else if record.status == RecordStatus::Retained {
        Action::Attach(changes)
    } else if changes.is_empty() {
        Action::Keep
    } else {
        Action::Update(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::attrs;

    #[test]
    fn a_long_value_is_said_to_have_changed_a_short_one_is_shown() {
        let short = Change::Setting { setting: "cpu".into(), from: "2048".into(), to: "4096".into() };
        assert_eq!(short.to_string(), "cpu 2048 -> 4096");
        let policy = format!("{{\"Statement\":[{}]}}", "x".repeat(LONG_VALUE));
        let long = Change::Setting { setting: "policy".into(), from: policy.clone(), to: policy + " " };
        assert_eq!(long.to_string(), "policy changed");
    }

    fn record(status: RecordStatus, cidr: &str) -> ResourceRecord {
        ResourceRecord {
            kind: "ec2:subnet".into(),
            step: "subnets".into(),
            status,
            id: Some("subnet-1".into()),
            depends_on: vec![],
            attrs: attrs([("cidr", cidr.to_string()), ("az", "a".into())]),
            generation: 0,
            updated_at: String::new(),
        }
    }

    fn desired(cidr: &str) -> Desired {
        Desired::new("subnet-public-a", "ec2:subnet", attrs([("cidr", cidr.to_string())]))
    }

    fn present(drift: &[&str], owner: Owner) -> Live {
        Live::Present { summary: String::new(), drift: drift.iter().map(|d| d.to_string()).collect(), owner }
    }

    #[test]
    fn every_situation_has_one_answer() {
        use RecordStatus::*;
        let same = desired("10.0.0.0/18");
        let ours = present(&[], Owner::Ours);
        let rows: Vec<(Option<ResourceRecord>, Option<Live>, Desired, &str)> = vec![
            (None, None, same.clone(), "create"),
            (Some(record(Created, "10.0.0.0/18")), Some(ours.clone()), same.clone(), "keep"),
            (Some(record(Created, "10.0.0.0/18")), Some(present(&[], Owner::Unchecked)), same.clone(), "keep"),
            (
                Some(record(Created, "10.0.0.0/18")),
                Some(present(&["rule x is missing"], Owner::Ours)),
                same.clone(),
                "update",
            ),
            (Some(record(Created, "10.0.0.0/18")), Some(ours.clone()), desired("10.0.64.0/18"), "update"),
            (
                Some(record(Created, "10.0.0.0/18")),
                Some(ours.clone()),
                desired("10.0.64.0/18").replaced_on(&["cidr"]),
                "replace",
            ),
            (Some(record(Created, "10.0.0.0/18")), Some(Live::Missing), same.clone(), "re-create"),
            (
                Some(record(Created, "10.0.0.0/18")),
                Some(present(&[], Owner::Foreign("x".into()))),
                same.clone(),
                "refuse",
            ),
            (Some(record(Retained, "10.0.0.0/18")), Some(ours.clone()), same.clone(), "attach"),
            (Some(record(Pending, "10.0.0.0/18")), None, same.clone(), "resume"),
            (Some(record(Imported, "10.9.0.0/18")), Some(Live::Missing), same.clone(), "keep"),
            (Some(record(Created, "10.0.0.0/18")), None, desired("10.0.64.0/18"), "update"),
        ];
        for (i, (record, live, desired, want)) in rows.into_iter().enumerate() {
            assert_eq!(decide(record.as_ref(), live.as_ref(), &desired).verb(), want, "row {i}");
        }
    }

    #[test]
    fn changes_name_the_setting_and_both_values() {
        let action = decide(Some(&record(RecordStatus::Created, "10.0.0.0/18")), None, &desired("10.0.64.0/18"));
        assert_eq!(action.changes()[0].to_string(), "cidr 10.0.0.0/18 -> 10.0.64.0/18");
        let mut wants_sets = Desired::new("sg", "ec2:security-group", Default::default()).with("ingress", ["a", "c"]);
        wants_sets.sets = &["ingress"];
        let mut group = record(RecordStatus::Created, "x");
        group.attrs = Default::default();
        group.attrs.insert("ingress".into(), serde_json::json!(["b", "a"]));
        assert_eq!(decide(Some(&group), None, &wants_sets).changes()[0].to_string(), "ingress +c -b");
    }
}
