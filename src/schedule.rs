//! Office hours: when GitLab runs. `schedule = { days = "Mon-Fri", start = "07:30", stop =
//! "19:30", timezone = "Europe/Berlin" }` becomes two of Application Auto Scaling's scheduled
//! actions on the service, in that time zone: one that wakes GitLab early enough to be healthy
//! at `start`, one that puts it to sleep at `stop`. AWS runs them; nothing of ours does.
//! Holidays are not handled: a scheduled wake on a holiday wakes GitLab (`sleep` puts it back
//! until the next scheduled change).

use std::fmt;

use jiff::Zoned;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

/// How long before `start` GitLab is woken: a restart of an existing GitLab (task placed and
/// started, image pulled, reconfigure and services up: about 5 minutes in the model, see
/// `make bench`) with room to spare. A first boot is longer (10-20 minutes) but happens at `up`.
pub const WAKE_LEAD_MINUTES: i16 = 10;

/// The schedule as written in the configuration (and `--schedule "Mon-Fri 07:30-19:30 Europe/Berlin"`).
/// In the file either as a table or as the flag's one line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(try_from = "WrittenSchedule")]
pub struct ScheduleSetting {
    /// The working days: `Mon-Fri`, `Mon,Wed,Fri`, `Sun-Thu`
    pub days: String,
    /// When GitLab must be ready, `HH:MM` in `timezone`
    pub start: String,
    /// When it goes to sleep, `HH:MM` (earlier than start: the next day)
    pub stop: String,
    /// An IANA time zone, e.g. Europe/Berlin, America/New_York, UTC
    pub timezone: String,
}

/// What the file may hold: `schedule = "Mon-Fri 07:30-19:30 Europe/Berlin"` or the table.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum WrittenSchedule {
    Line(String),
    Table(ScheduleTable),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleTable {
    days: String,
    start: String,
    stop: String,
    timezone: String,
}

impl TryFrom<WrittenSchedule> for ScheduleSetting {
    type Error = String;

    fn try_from(written: WrittenSchedule) -> Result<Self, String> {
        match written {
            WrittenSchedule::Line(line) => parse_flag(&line),
            WrittenSchedule::Table(ScheduleTable { days, start, stop, timezone }) => {
                Ok(ScheduleSetting { days, start, stop, timezone })
            }
        }
    }
}

/// `--schedule "Mon-Fri 07:30-19:30 Europe/Berlin"`.
pub fn parse_flag(text: &str) -> Result<ScheduleSetting, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [days, hours, timezone] = parts[..] else {
        return Err("write it like \"Mon-Fri 07:30-19:30 Europe/Berlin\"".into());
    };
    let Some((start, stop)) = hours.split_once('-') else {
        return Err(format!("{hours:?} is not START-STOP, e.g. 07:30-19:30"));
    };
    Ok(ScheduleSetting { days: days.into(), start: start.into(), stop: stop.into(), timezone: timezone.into() })
}

/// Office hours, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfficeHours {
    pub days: Vec<Weekday>,
    pub start: Time,
    pub stop: Time,
    pub timezone: String,
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn weekday(name: &str) -> Result<Weekday, String> {
    let short = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .find(|(n, _)| short.starts_with(n) && n.len() <= short.len())
        .map(|(_, d)| *d)
        .ok_or_else(|| format!("{name:?} is not a day (Mon, Tue, ... Sun)"))
}

fn parse_days(text: &str) -> Result<Vec<Weekday>, String> {
    let mut days = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (mut day, last) = (weekday(from)?, weekday(to)?);
                loop {
                    days.push(day);
                    if day == last {
                        break;
                    }
                    day = day.wrapping_add(1);
                }
            }
            None => days.push(weekday(part)?),
        }
    }
    days.sort_by_key(|d| d.to_monday_one_offset());
    days.dedup();
    Ok(days)
}

fn parse_time(text: &str) -> Result<Time, String> {
    let (h, m) = text.split_once(':').ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let (h, m): (i8, i8) = (
        h.parse().map_err(|_| format!("{text:?} is not HH:MM"))?,
        m.parse().map_err(|_| format!("{text:?} is not HH:MM"))?,
    );
    Time::new(h, m, 0, 0).map_err(|_| format!("{text:?} is not a time of day"))
}

impl OfficeHours {
    /// The schedule, or what is wrong with it (one message per field, the field named).
    pub fn from_setting(s: &ScheduleSetting) -> Result<OfficeHours, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let days = parse_days(&s.days).map_err(|e| problems.push(("days", e))).unwrap_or_default();
        let start = parse_time(&s.start).map_err(|e| problems.push(("start", e))).unwrap_or_default();
        let stop = parse_time(&s.stop).map_err(|e| problems.push(("stop", e))).unwrap_or_default();
        if TimeZone::get(&s.timezone).is_err() {
            problems.push(("timezone", format!("{:?} is not an IANA time zone", s.timezone)));
        }
        if start == stop && problems.is_empty() {
            problems.push(("stop", "equals start: GitLab would never run".into()));
        }
        if problems.is_empty() {
            Ok(OfficeHours { days, start, stop, timezone: s.timezone.clone() })
        } else {
            Err(problems)
        }
    }

    /// When the wake action runs: `start` less the lead, possibly the day before.
    fn wake_at(&self) -> (Time, bool) {
        let minutes = i32::from(self.start.hour()) * 60 + i32::from(self.start.minute()) - i32::from(WAKE_LEAD_MINUTES);
        let (minutes, day_before) = if minutes < 0 { (minutes + 24 * 60, true) } else { (minutes, false) };
        (Time::constant((minutes / 60) as i8, (minutes % 60) as i8, 0, 0), day_before)
    }

    /// Minutes GitLab runs each working day (wake to stop).
    fn running_minutes(&self) -> i32 {
        let (wake, _) = self.wake_at();
        let of = |t: Time| i32::from(t.hour()) * 60 + i32::from(t.minute());
        let minutes = of(self.stop) - of(wake);
        if minutes <= 0 { minutes + 24 * 60 } else { minutes }
    }

    /// Hours GitLab runs in an average month (52 weeks / 12).
    pub fn running_hours_per_month(&self) -> f64 {
        f64::from(self.running_minutes()) / 60.0 * self.days.len() as f64 * 52.0 / 12.0
    }

    fn cron(time: Time, days: &[Weekday]) -> String {
        let names: Vec<&str> =
            days.iter().map(|d| DAYS.iter().find(|(_, w)| w == d).map(|(n, _)| *n).unwrap_or("mon")).collect();
        let names = names.join(",").to_ascii_uppercase();
        // Application Auto Scaling's six fields: minutes hours day-of-month month day-of-week year.
        format!("cron({} {} ? * {names} *)", time.minute(), time.hour())
    }

    /// The wake action's schedule: the working days (the day before each, when the lead
    /// crosses midnight).
    pub fn wake_cron(&self) -> String {
        let (time, day_before) = self.wake_at();
        let days: Vec<Weekday> =
            if day_before { self.days.iter().map(|d| d.wrapping_sub(1)).collect() } else { self.days.clone() };
        Self::cron(time, &days)
    }

    /// The sleep action's schedule: `stop` on the working days (the next day, for a stop
    /// before the start: a night shift).
    pub fn sleep_cron(&self) -> String {
        let next_day = self.stop <= self.start;
        let days: Vec<Weekday> =
            if next_day { self.days.iter().map(|d| d.wrapping_add(1)).collect() } else { self.days.clone() };
        Self::cron(self.stop, &days)
    }

    /// The next scheduled change after `now`: whether it wakes GitLab, and when (in the
    /// schedule's time zone).
    pub fn next_change(&self, now: &Zoned) -> Option<(bool, Zoned)> {
        let tz = TimeZone::get(&self.timezone).ok()?;
        let here = now.with_time_zone(tz);
        let (wake, day_before) = self.wake_at();
        let next_day = self.stop <= self.start;
        let mut best: Option<(bool, Zoned)> = None;
        for offset in 0..9 {
            let date = here.date().checked_add(jiff::Span::new().days(offset)).ok()?;
            for (wakes, time, shift) in
                [(true, wake, if day_before { 1 } else { 0 }), (false, self.stop, if next_day { -1 } else { 0 })]
            {
                // The working day this change belongs to.
                let workday = date.checked_add(jiff::Span::new().days(shift)).ok()?;
                if !self.days.contains(&workday.weekday()) {
                    continue;
                }
                let at = date.to_datetime(time).to_zoned(here.time_zone().clone()).ok()?;
                if at > here && best.as_ref().is_none_or(|(_, b)| at < *b) {
                    best = Some((wakes, at));
                }
            }
            if best.is_some() {
                break;
            }
        }
        best
    }
}

impl fmt::Display for OfficeHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<String> = self.days.iter().map(|d| format!("{d:?}")[..3].to_string()).collect();
        write!(
            f,
            "{} {}-{} {}",
            days.join(","),
            self.start.strftime("%H:%M"),
            self.stop.strftime("%H:%M"),
            self.timezone
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(days: &str, start: &str, stop: &str) -> OfficeHours {
        let setting = ScheduleSetting {
            days: days.into(),
            start: start.into(),
            stop: stop.into(),
            timezone: "Europe/Berlin".into(),
        };
        OfficeHours::from_setting(&setting).unwrap()
    }

    #[test]
    fn office_hours_become_two_cron_expressions_with_the_lead() {
        let h = hours("Mon-Fri", "07:30", "19:30");
        assert_eq!(h.wake_cron(), "cron(20 7 ? * MON,TUE,WED,THU,FRI *)");
        assert_eq!(h.sleep_cron(), "cron(30 19 ? * MON,TUE,WED,THU,FRI *)");
        // 12 h 10 min on 5 days a week.
        assert!(
            (h.running_hours_per_month() - 12.0 * 5.0 * 52.0 / 12.0 - 10.0 / 60.0 * 5.0 * 52.0 / 12.0).abs() < 0.01
        );
        // A start just after midnight wakes the day before; a night shift stops the next day.
        let night = hours("Sun-Thu", "00:05", "08:00");
        assert_eq!(night.wake_cron(), "cron(55 23 ? * SUN,MON,TUE,WED,SAT *)");
        let shift = hours("Mon", "22:00", "06:00");
        assert_eq!(shift.sleep_cron(), "cron(0 6 ? * TUE *)");
    }

    #[test]
    fn a_bad_schedule_names_each_field() {
        let setting = ScheduleSetting {
            days: "Mon-Fry".into(),
            start: "7h".into(),
            stop: "19:30".into(),
            timezone: "Berlin".into(),
        };
        let problems = OfficeHours::from_setting(&setting).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["days", "start", "timezone"]);
        assert_eq!(parse_flag("Mon-Fri 07:30-19:30 Europe/Berlin").unwrap().stop, "19:30");
        assert!(parse_flag("weekdays").is_err());
    }

    #[test]
    fn the_next_change_is_found_in_the_schedules_time_zone() {
        let h = hours("Mon-Fri", "07:30", "19:30");
        // Friday 20:00 in Berlin: the next change wakes GitLab on Monday at 07:20.
        let friday: Zoned = "2026-12-04T20:00:00+01:00[Europe/Berlin]".parse().unwrap();
        let (wakes, at) = h.next_change(&friday).unwrap();
        assert!(wakes);
        assert_eq!(at.strftime("%a %H:%M").to_string(), "Mon 07:20");
        // Monday 10:00: it sleeps at 19:30.
        let monday: Zoned = "2026-12-07T10:00:00+01:00[Europe/Berlin]".parse().unwrap();
        let (wakes, at) = h.next_change(&monday).unwrap();
        assert!(!wakes);
        assert_eq!(at.strftime("%a %H:%M").to_string(), "Mon 19:30");
    }
}
