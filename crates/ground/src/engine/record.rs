//! What steps say about records: what they want to exist ([`Desired`]), what discovery found
//! ([`Discovered`]), and what a step may read while computing it ([`Env`]).

use std::collections::BTreeMap;

use anyhow::Context as _;

use crate::state::{RecordStatus, ResourceRecord};
pub use crate::state::{members, shown};

/// Shown by `plan` for a value that exists only once `up` has created what it comes from.
pub const KNOWN_AFTER: &str = "(known after up)";

/// A record's attributes: its settings and what AWS answered (ARNs, names), by name, each a JSON
/// value of its own type (a list is a list).
pub type Attrs = BTreeMap<String, serde_json::Value>;

/// Builds a record's attributes from pairs of text settings.
pub fn attrs<const N: usize>(pairs: [(&str, String); N]) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect()
}

/// What a step wants to exist under a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub key: String,
    pub kind: String,
    /// Settings compared with the record: a difference is an update in place.
    pub attrs: Attrs,
    /// Settings that cannot change in place: a difference replaces the resource.
    pub replace_on: &'static [&'static str],
    /// Settings that are sets (lists whose order does not matter): a change shows what is added
    /// and removed.
    pub sets: &'static [&'static str],
    /// Settings newer than some records: a record without one had it at this value (so adding
    /// a setting to a kind changes nothing on the stacks that already run).
    pub assumed: &'static [(&'static str, &'static str)],
}

impl Desired {
    pub fn new(key: &str, kind: impl ToString, attrs: Attrs) -> Self {
        Desired { key: key.to_string(), kind: kind.to_string(), attrs, replace_on: &[], sets: &[], assumed: &[] }
    }

    pub fn replaced_on(mut self, settings: &'static [&'static str]) -> Self {
        self.replace_on = settings;
        self
    }

    pub fn with_sets(mut self, settings: &'static [&'static str]) -> Self {
        self.sets = settings;
        self
    }

    /// A setting of its own type (a list, a number), beside the text ones.
    pub fn with(mut self, name: &str, value: impl serde::Serialize) -> Self {
        self.attrs.insert(name.to_string(), serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
        self
    }

    /// A text setting, as wanted ("" when it has none).
    pub fn text(&self, name: &str) -> &str {
        self.attrs.get(name).and_then(|v| v.as_str()).unwrap_or_default()
    }

    /// A list setting's items, as wanted.
    pub fn list(&self, name: &str) -> Vec<String> {
        members(self.attrs.get(name))
    }

    /// See [`Desired::assumed`].
    pub fn assuming(mut self, settings: &'static [(&'static str, &'static str)]) -> Self {
        self.assumed = settings;
        self
    }

    /// What the record says of a setting, or what a record without it had.
    pub fn recorded(&self, record: &crate::state::ResourceRecord, name: &str) -> Option<serde_json::Value> {
        record.attrs.get(name).cloned().or_else(|| {
            self.assumed.iter().find(|(n, _)| *n == name).map(|(_, v)| serde_json::Value::String(v.to_string()))
        })
    }
}

/// The desired records of a step that wants exactly `N`.
pub fn exactly<const N: usize>(wants: Vec<Desired>) -> anyhow::Result<[Desired; N]> {
    let count = wants.len();
    wants.try_into().map_err(|_| anyhow::anyhow!("expected {N} desired record(s), got {count}"))
}

/// A resource found by `discover`.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub key: String,
    pub id: String,
    /// What deleting it needs (as a record's attrs would hold).
    pub attrs: Attrs,
}

impl Discovered {
    pub fn new(key: impl Into<String>, id: impl Into<String>) -> Self {
        Discovered { key: key.into(), id: id.into(), attrs: BTreeMap::new() }
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attrs.insert(name.to_string(), serde_json::Value::String(value.into()));
        self
    }
}

/// Something with the stack's name that is not the stack's own: `up` refuses to create beside
/// it, `status --discover` shows it, nothing touches it.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Conflict {
    pub kind: String,
    pub id: String,
    pub why: String,
}

/// What discovery found for one kind.
#[derive(Debug, Default)]
pub struct Found {
    pub ours: Vec<Discovered>,
    pub conflicts: Vec<Conflict>,
}

impl From<Vec<Discovered>> for Found {
    fn from(ours: Vec<Discovered>) -> Self {
        Found { ours, conflicts: Vec::new() }
    }
}

/// The records a step may read while computing what it wants: those it declared it needs, and
/// its own. Reading anything else is a bug in the step's declaration, reported as such.
pub struct Env<'a> {
    pub records: &'a BTreeMap<String, ResourceRecord>,
    pub step: &'a str,
    pub readable: &'a [String],
    /// For `plan`: an id that does not exist yet is [`KNOWN_AFTER`] instead of an error.
    pub planning: bool,
}

impl Env<'_> {
    pub fn record(&self, key: &str) -> anyhow::Result<Option<&ResourceRecord>> {
        anyhow::ensure!(
            self.readable.iter().any(|k| k == key),
            "step {} reads {key} without declaring that it needs it",
            self.step
        );
        Ok(self.records.get(key).filter(|r| r.status != RecordStatus::Pending))
    }

    /// The id of a record this step needs.
    pub fn id(&self, key: &str) -> anyhow::Result<String> {
        match self.record(key)?.and_then(|r| r.id.clone()) {
            Some(id) => Ok(id),
            None if self.planning => Ok(KNOWN_AFTER.to_string()),
            None => anyhow::bail!("{key} is not recorded in the state; its step must run first"),
        }
    }

    /// A list attribute of a record this step needs.
    pub fn list(&self, key: &str, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.record(key)?.map(|r| r.list(name)).unwrap_or_default())
    }

    /// An attribute of a record this step needs.
    pub fn attr(&self, key: &str, name: &str) -> anyhow::Result<String> {
        match self.record(key)?.and_then(|r| r.attr(name)) {
            Some(value) => Ok(value.to_string()),
            None if self.planning => Ok(KNOWN_AFTER.to_string()),
            None => Err(anyhow::anyhow!("{key} has no recorded {name}")).context("its step must run first"),
        }
    }
}
