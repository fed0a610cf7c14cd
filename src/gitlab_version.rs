//! GitLab versions and the upgrade path: no downgrade (GitLab cannot undo its database
//! migrations) and no jump across a required upgrade stop (GitLab refuses to start). The stops
//! are data, in `data/upgrade-stops.toml`, dated and with their source.

use std::cmp::Ordering;
use std::fmt;

use serde::Deserialize;

const STOPS_FILE: &str = include_str!("../data/upgrade-stops.toml");

/// A gitlab-ce release tag: `19.4.1-ce.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub build: u32,
}

impl Version {
    pub fn parse(tag: &str) -> Option<Version> {
        let (version, build) = tag.split_once("-ce.")?;
        let numbers: Vec<u32> = version.split('.').map(number).collect::<Option<_>>()?;
        let [major, minor, patch] = numbers[..] else { return None };
        Some(Version { major, minor, patch, build: number(build)? })
    }

    fn minor_release(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}-ce.{}", self.major, self.minor, self.patch, self.build)
    }
}

/// A required stop: a minor release, and the lowest patch the documentation names (else the
/// latest patch of that minor is meant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub major: u32,
    pub minor: u32,
    pub patch: Option<u32>,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(patch) => {
                write!(f, "{}.{}.{patch} or a later {}.{} patch", self.major, self.minor, self.major, self.minor)
            }
            None => write!(f, "the latest {}.{} patch", self.major, self.minor),
        }
    }
}

#[derive(Deserialize)]
struct StopsFile {
    as_of: String,
    source: String,
    scheduled_from: String,
    scheduled_minors: Vec<u32>,
    stops: Vec<String>,
    #[serde(default)]
    latest_patches: std::collections::BTreeMap<String, String>,
}

/// The upgrade path rules, as dated data.
pub struct UpgradePath {
    pub as_of: String,
    pub source: String,
    scheduled_from: (u32, u32),
    scheduled_minors: Vec<u32>,
    stops: Vec<Stop>,
    /// The latest patch of each stop known on `as_of`, by minor release.
    latest_patches: std::collections::BTreeMap<(u32, u32), u32>,
}

impl UpgradePath {
    /// The table shipped with this build.
    pub fn shipped() -> UpgradePath {
        let file: StopsFile = toml::from_str(STOPS_FILE).expect("data/upgrade-stops.toml is checked by a test");
        let minor = |text: &str| {
            let mut parts = text.split('.').map(|p| p.parse::<u32>().expect("a number"));
            (parts.next().expect("major"), parts.next().expect("minor"), parts.next())
        };
        let (major, minor_from, _) = minor(&file.scheduled_from);
        UpgradePath {
            as_of: file.as_of,
            source: file.source,
            scheduled_from: (major, minor_from),
            scheduled_minors: file.scheduled_minors,
            stops: file
                .stops
                .iter()
                .map(|s| minor(s))
                .map(|(major, minor, patch)| Stop { major, minor, patch })
                .collect(),
            latest_patches: file
                .latest_patches
                .values()
                .map(|v| minor(v))
                .map(|(major, minor, patch)| ((major, minor), patch.expect("a patch")))
                .collect(),
        }
    }

    /// Whether `version` is a required stop.
    pub fn is_stop(&self, version: Version) -> bool {
        let release = version.minor_release();
        self.stops.iter().any(|s| (s.major, s.minor) == release)
            || (release >= self.scheduled_from && self.scheduled_minors.contains(&release.1))
    }

    /// The latest patch of a stop this build knows (`None`: a stop released after its data).
    pub fn latest_patch(&self, version: Version) -> Option<u32> {
        self.latest_patches.get(&version.minor_release()).copied()
    }

    /// A stop must be deployed at its latest patch (GitLab: "rather than the first patch
    /// release"): at least the latest this build knows.
    pub fn check_stop_patch(&self, version: Version) -> Result<(), VersionError> {
        match self.latest_patch(version) {
            Some(latest) if self.is_stop(version) && version.patch < latest => {
                Err(VersionError::EarlyPatch { given: version, latest: Version { patch: latest, build: 0, ..version } })
            }
            _ => Ok(()),
        }
    }

    /// The stops strictly between two versions' minor releases, in order.
    pub fn stops_between(&self, from: Version, to: Version) -> Vec<Stop> {
        let (low, high) = (from.minor_release(), to.minor_release());
        let mut stops: Vec<Stop> =
            self.stops.iter().copied().filter(|s| (s.major, s.minor) > low && (s.major, s.minor) < high).collect();
        for major in low.0..=high.0 {
            for &minor in &self.scheduled_minors {
                let release = (major, minor);
                if release >= self.scheduled_from && release > low && release < high {
                    stops.push(Stop { major, minor, patch: None });
                }
            }
        }
        stops.sort_by_key(|s| (s.major, s.minor));
        stops.dedup_by_key(|s| (s.major, s.minor));
        stops
    }

    /// Whether `from` may be replaced by `to` in one deployment.
    pub fn check(&self, from: Version, to: Version) -> Result<Hop, VersionError> {
        match to.cmp(&from) {
            Ordering::Equal => Ok(Hop::Same),
            Ordering::Less => Err(VersionError::Downgrade { from, to }),
            Ordering::Greater => {
                let stops = self.stops_between(from, to);
                if stops.is_empty() { Ok(Hop::Upgrade) } else { Err(VersionError::AcrossStops { from, to, stops }) }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Same,
    Upgrade,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "gitlab_image_tag {to} is older than the {from} GitLab runs: GitLab cannot be downgraded once its database has migrated"
    )]
    Downgrade { from: Version, to: Version },
    #[error(
        "GitLab {from} cannot go to {to} in one step: it must stop at {}\n    path: {}",
        list(.stops), path(.from, .stops, .to)
    )]
    AcrossStops { from: Version, to: Version, stops: Vec<Stop> },
    #[error(
        "{given} is an early patch of the required stop {}.{}: GitLab asks for the stop's latest patch, {latest} or later",
        .given.major, .given.minor
    )]
    EarlyPatch { given: Version, latest: Version },
}

impl ground::Help for VersionError {
    fn help(&self) -> Option<String> {
        Some(match self {
            VersionError::Downgrade { from, .. } => format!(
                "set gitlab_image_tag = \"{from}\" (or remove it: the running version is kept); to go back in time, restore a backup taken before the upgrade (`gitlab-provision backup list`)"
            ),
            VersionError::AcrossStops { to, stops, .. } => format!(
                "upgrade one stop at a time with `gitlab-provision upgrade --to {to} --via {}` (pick each stop's latest patch from https://hub.docker.com/r/gitlab/gitlab-ce/tags), letting background migrations finish between stops",
                vias(stops)
            ),
            VersionError::EarlyPatch { latest, .. } => format!("use --via {latest} (or a later patch of it)"),
        })
    }
}

fn list(stops: &[Stop]) -> String {
    stops.iter().map(|s| format!("{}.{}", s.major, s.minor)).collect::<Vec<_>>().join(", ")
}

fn path(from: &Version, stops: &[Stop], to: &Version) -> String {
    let mut hops = vec![from.to_string()];
    hops.extend(stops.iter().map(ToString::to_string));
    hops.push(to.to_string());
    hops.join(" -> ")
}

fn vias(stops: &[Stop]) -> String {
    stops
        .iter()
        .map(|s| format!("{}.{}.{}-ce.0", s.major, s.minor, s.patch.map_or("X".to_string(), |p| p.to_string())))
        .collect::<Vec<_>>()
        .join(" --via ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(tag: &str) -> Version {
        Version::parse(tag).unwrap_or_else(|| panic!("{tag} parses"))
    }

    #[test]
    fn the_shipped_table_is_dated_and_sourced() {
        let path = UpgradePath::shipped();
        assert!(path.as_of.starts_with("20") && path.source.starts_with("https://docs.gitlab.com/"));
    }

    #[test]
    fn tags_parse_only_in_the_pinned_ce_form() {
        assert_eq!(v("19.4.1-ce.0"), Version { major: 19, minor: 4, patch: 1, build: 0 });
        for bad in [
            "latest",
            "19.4",
            "19.4.1",
            "19.4.1-ee.0",
            "19.4.1-ce.",
            "v19.4.1-ce.0",
            "19.04.1-ce.0",
            "19.4.1-ce.0-rc1",
            "19.x.1-ce.0",
            "",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_rules_table() {
        let path = UpgradePath::shipped();
        // (from, to, outcome: "same" | "upgrade" | "downgrade" | stops joined by ",")
        let rows = [
            ("19.4.1-ce.0", "19.4.1-ce.0", "same"),
            ("19.4.1-ce.0", "19.4.2-ce.0", "upgrade"),
            ("19.4.1-ce.0", "19.4.1-ce.1", "upgrade"),
            ("19.3.0-ce.0", "19.4.9-ce.0", "upgrade"),
            ("19.4.2-ce.0", "19.4.1-ce.0", "downgrade"),
            ("19.5.0-ce.0", "19.4.9-ce.0", "downgrade"),
            ("20.0.0-ce.0", "19.11.3-ce.0", "downgrade"),
            ("19.4.1-ce.0", "19.5.3-ce.0", "upgrade"),
            ("19.4.1-ce.0", "19.6.0-ce.0", "19.5"),
            ("19.4.1-ce.0", "21.0.0-ce.0", "19.5,19.8,19.11,20.2,20.5,20.8,20.11"),
            ("19.11.4-ce.0", "20.0.1-ce.0", "upgrade"),
            ("19.10.0-ce.0", "20.0.0-ce.0", "19.11"),
            ("17.4.0-ce.0", "17.6.0-ce.0", "17.5"),
            ("17.0.0-ce.0", "17.4.0-ce.0", "17.1,17.3"),
            ("16.6.0-ce.0", "16.8.0-ce.0", "16.7"),
            ("16.10.0-ce.0", "17.0.0-ce.0", "16.11"),
            ("15.10.0-ce.0", "16.0.0-ce.0", "15.11"),
            ("16.11.5-ce.0", "17.1.2-ce.0", "upgrade"),
            ("18.2.0-ce.0", "18.5.1-ce.0", "upgrade"),
        ];
        for (from, to, want) in rows {
            let got = match path.check(v(from), v(to)) {
                Ok(Hop::Same) => "same".to_string(),
                Ok(Hop::Upgrade) => "upgrade".to_string(),
                Err(VersionError::Downgrade { .. }) => "downgrade".to_string(),
                Err(VersionError::AcrossStops { stops, .. }) => list(&stops).replace(", ", ","),
                Err(e @ VersionError::EarlyPatch { .. }) => e.to_string(),
            };
            assert_eq!(got, want, "{from} -> {to}");
        }
    }

    #[test]
    fn a_refusal_prints_the_path_and_the_next_command() {
        let err = UpgradePath::shipped().check(v("19.4.1-ce.0"), v("19.9.0-ce.0")).unwrap_err();
        let (message, help) = (err.to_string(), ground::Help::help(&err).unwrap_or_default());
        assert!(
            message.contains("19.4.1-ce.0 -> the latest 19.5 patch -> the latest 19.8 patch -> 19.9.0-ce.0"),
            "{message}"
        );
        assert!(
            help.contains("gitlab-provision upgrade --to 19.9.0-ce.0 --via 19.5.X-ce.0 --via 19.8.X-ce.0"),
            "{help}"
        );
    }

    /// The data's latest patches agree with the "Required version" tables GitLab publishes
    /// (a copy, dated, in data/gitlab-upgrade-paths-table.md): each row is a known stop at the
    /// patch the data names, and each stop of those majors in the data has its row.
    #[test]
    fn the_stops_match_gitlab_s_table() {
        let table = include_str!("../data/gitlab-upgrade-paths-table.md");
        let rows: Vec<Version> = table
            .lines()
            .filter_map(|line| line.strip_prefix('|')?.split('|').next())
            .filter_map(|cell| Version::parse(&format!("{}-ce.0", cell.trim())))
            .collect();
        assert!(rows.len() >= 15, "the table has its rows: {rows:?}");
        let path = UpgradePath::shipped();
        for row in &rows {
            assert_eq!(
                path.latest_patch(*row),
                Some(row.patch),
                "{row}: the data's latest patch differs from GitLab's table"
            );
        }
        for (&(major, minor), &patch) in &path.latest_patches {
            if (15..=17).contains(&major) {
                assert!(
                    rows.iter().any(|r| (r.major, r.minor, r.patch) == (major, minor, patch)),
                    "{major}.{minor}.{patch} is in the data but not in GitLab's table"
                );
            }
        }
        assert_eq!(path.as_of, "2026-12-04", "refreshed data carries the date it was read");
    }
}
