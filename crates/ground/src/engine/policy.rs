//! What differs from one kind of resource to another, as data: a kind's whole policy is one row
//! of the catalog's table, and everything that acts on a kind (teardown, discovery, `down
//! --keep-data`, the confirmation of disruptive changes) reads it from there.

use super::decide::{Action, Change};

/// One kind's row.
#[derive(Debug, Clone, Copy)]
pub struct KindPolicy {
    /// Part of the stack's data: `down --keep-data` keeps it, and the next `up` attaches it.
    pub data: bool,
    /// Kept by a plain `down` while it holds something (a vault's backups, a bucket's objects):
    /// the tool never deletes what it cannot recreate. The kind's operations say what it holds.
    pub kept_while_holding: bool,
    /// A plain `down` refuses to delete it while it holds something (a bucket of GitLab's
    /// uploads and artifacts) unless told to delete what it holds too: that is data GitLab's
    /// users made, and no backup of the tool's has it.
    pub refused_while_holding: bool,
    /// Kept, it keeps what it needs: it cannot outlive them (a database instance sits in its
    /// subnets and security group; a security group admitting another holds that one).
    pub keeps_its_needs: bool,
    /// What a change to it interrupts (the confirmation `up` asks for).
    pub interrupts: Interrupts,
    /// How a lost state finds it again.
    pub discovery: Discovery,
    /// Deletion order for resources found without a record (lower goes first), since their
    /// dependencies were never recorded.
    pub rank: i8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// By the stack's tags (or the names it gives, checked against its tags).
    ByTags,
    /// Not on its own: it is found through what owns it, or exists only in the state.
    Never,
}

/// What a change interrupts, and when: `what` may say `{key}` and `{changes}`.
#[derive(Debug, Clone, Copy)]
pub struct Interrupts {
    pub when: &'static [When],
    pub what: &'static str,
}

impl Interrupts {
    pub const NOTHING: Interrupts = Interrupts { when: &[], what: "" };
}

/// The kinds of change that interrupt something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Converged in place.
    Updated,
    /// Deleted and created again (a setting that cannot change in place, or deleted outside).
    Replaced,
    /// Created anew on a stack that already runs (a second NAT taking over the route).
    CreatedOnRunningStack,
    /// A member of a set removed, or something added by hand taken away: someone is cut off.
    /// Adding members (a new office network) interrupts nobody.
    MembersRemoved,
    /// Removed because the configuration no longer has it.
    Removed,
    /// Converged in place with this setting changed (other updates interrupt nothing).
    SettingChanged(&'static str),
}

impl KindPolicy {
    /// What `action` on the resource `key` interrupts, if anything; `running` says whether the
    /// stack already serves (nothing is interrupted while it is being built).
    pub fn disruption(&self, key: &str, action: &Action, running: bool) -> Option<String> {
        if !running {
            return None;
        }
        let changes = action.changes();
        let applies = self.interrupts.when.iter().any(|when| match when {
            When::Updated => matches!(action, Action::Update(_)),
            When::Replaced => matches!(action, Action::Replace(_) | Action::Recreate),
            When::CreatedOnRunningStack => matches!(action, Action::Create | Action::Replace(_) | Action::Recreate),
            When::MembersRemoved => {
                matches!(action, Action::Update(_))
                    && changes.iter().any(|c| match c {
                        Change::Members { removed, .. } => !removed.is_empty(),
                        Change::Drift { .. } => true,
                        Change::Setting { .. } => false,
                    })
            }
            When::Removed => false,
            When::SettingChanged(name) => {
                matches!(action, Action::Update(_))
                    && changes.iter().any(|c| matches!(c, Change::Setting { setting, .. } if setting == name))
            }
        });
        applies.then(|| self.describe(key, changes))
    }

    /// What removing the resource interrupts, if anything.
    pub fn removal(&self, key: &str) -> Option<String> {
        self.interrupts.when.contains(&When::Removed).then(|| self.describe(key, &[]))
    }

    fn describe(&self, key: &str, changes: &[Change]) -> String {
        let changes = changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        self.interrupts.what.replace("{key}", key).replace("{changes}", &changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: KindPolicy = KindPolicy {
        data: false,
        kept_while_holding: false,
        refused_while_holding: false,
        keeps_its_needs: true,
        interrupts: Interrupts { when: &[When::MembersRemoved], what: "{key} changes who may connect: {changes}" },
        discovery: Discovery::ByTags,
        rank: 1,
    };

    fn members(added: &[&str], removed: &[&str]) -> Action {
        Action::Update(vec![Change::Members {
            setting: "ingress".into(),
            added: added.iter().map(|s| s.to_string()).collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }])
    }

    #[test]
    fn adding_access_interrupts_nobody_and_removing_it_does() {
        assert_eq!(GROUP.disruption("sg", &members(&["10.1.0.0/16"], &[]), true), None);
        let cut = GROUP.disruption("sg", &members(&["a"], &["10.2.0.0/16"]), true).expect("a removal asks");
        assert!(cut.starts_with("sg changes who may connect: ingress +a -10.2.0.0/16"), "{cut}");
        assert_eq!(GROUP.disruption("sg", &members(&[], &["x"]), false), None, "nothing runs yet");
    }
}
