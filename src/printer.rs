//! The only place that decides how output looks: progress bars on a terminal and plain
//! timestamped lines otherwise, one JSON event per line with `--json`, colour or not, quiet or
//! verbose. Progress and messages go to stderr; results go to stdout. Commands print nothing
//! themselves.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::{ColorChoice, GlobalArgs};
use crate::engine::{Event, Observer};
use crate::exit::CliError;

/// The version of every JSON document and event the tool prints.
pub const SCHEMA_VERSION: u32 = 1;

/// How something reads at a glance.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Good,
    Changed,
    Bad,
    Warn,
    Dim,
    Bold,
}

impl Tone {
    fn style(self) -> anstyle::Style {
        use anstyle::{AnsiColor, Effects, Style};
        match self {
            Tone::Good => AnsiColor::Green.on_default(),
            Tone::Changed => AnsiColor::Yellow.on_default(),
            Tone::Bad => AnsiColor::Red.on_default(),
            Tone::Warn => AnsiColor::Yellow.on_default().effects(Effects::BOLD),
            Tone::Dim => Style::new().effects(Effects::DIMMED),
            Tone::Bold => Style::new().effects(Effects::BOLD),
        }
    }
}

/// How this run's output looks, decided once, here, from the terminal, the environment and the
/// flags: live progress only on a terminal that can redraw (not `TERM=dumb` or unset, not CI),
/// colour as `--color` says or, by default, where the stream is a terminal that wants it
/// (`NO_COLOR`, `TERM=dumb` and `CLICOLOR` honoured, as anstream reads them).
#[derive(Debug, Clone, Copy)]
pub struct Looks {
    pub bars: bool,
    pub color_err: bool,
    pub color_out: bool,
}

impl Looks {
    pub fn decide(global: &GlobalArgs, events_as_json: bool) -> Looks {
        let redraws = std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb");
        let bars = std::io::stderr().is_terminal()
            && redraws
            && global.verbose == 0
            && !global.quiet
            && !events_as_json
            && std::env::var_os("CI").is_none();
        Looks {
            bars,
            color_err: wants_color(global.color, anstream::AutoStream::choice(&std::io::stderr())),
            color_out: wants_color(global.color, anstream::AutoStream::choice(&std::io::stdout())),
        }
    }
}

fn wants_color(choice: ColorChoice, auto: anstream::ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => !matches!(auto, anstream::ColorChoice::Never),
    }
}

#[derive(Default)]
struct Tally {
    unchanged: usize,
    /// Steps that did not run, by why.
    skipped: std::collections::BTreeMap<&'static str, usize>,
}

struct Bars {
    multi: MultiProgress,
    by_step: Mutex<HashMap<String, ProgressBar>>,
}

pub struct Printer {
    started: Instant,
    /// `--json` on a command that streams: events as JSON lines on stdout.
    events_as_json: bool,
    quiet: bool,
    verbose: bool,
    color_err: bool,
    color_out: bool,
    bars: Option<Bars>,
    tally: Mutex<Tally>,
}

impl Printer {
    /// `events_as_json`: the command streams its progress as JSON (up/down --json).
    pub fn new(global: &GlobalArgs, events_as_json: bool) -> Self {
        let looks = Looks::decide(global, events_as_json);
        let bars = looks.bars.then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            by_step: Mutex::new(HashMap::new()),
        });
        Printer {
            started: Instant::now(),
            events_as_json,
            quiet: global.quiet,
            verbose: global.verbose > 0,
            color_err: looks.color_err,
            color_out: looks.color_out,
            bars,
            tally: Mutex::new(Tally::default()),
        }
    }

    /// Whether stdin and stderr are a terminal a question can be asked on.
    pub fn can_ask(&self) -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }

    /// `text` in a tone, for stderr.
    pub fn paint(&self, text: &str, tone: Tone) -> String {
        paint(self.color_err, text, tone)
    }

    /// `text` in a tone, for stdout.
    pub fn paint_out(&self, text: &str, tone: Tone) -> String {
        paint(self.color_out, text, tone)
    }

    /// A message line on stderr, kept on screen above any progress bars.
    fn say(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// The first lines of a command: what it works on, where, as whom.
    pub fn heading(&self, text: &str) {
        if !self.quiet {
            self.say(&self.paint(text, Tone::Bold));
        }
    }

    pub fn note(&self, text: &str) {
        if !self.quiet {
            self.say(&format!("{} {text}", self.paint("note:", Tone::Dim)));
        }
    }

    /// Said even with `--quiet`: something the user must know.
    pub fn warn(&self, text: &str) {
        self.say(&format!("{} {text}", self.paint("warning:", Tone::Warn)));
    }

    /// A line of a command's result (stdout); nothing in JSON mode, where the result is JSON.
    pub fn out(&self, text: &str) {
        if !self.events_as_json {
            write_stdout(&format!("{}\n", text.trim_end_matches('\n')));
        }
    }

    /// A command's result as JSON (stdout), with the schema version first.
    pub fn json(&self, kind: &str, value: &impl Serialize) -> anyhow::Result<()> {
        let mut doc = serde_json::to_value(value)?;
        if let serde_json::Value::Object(fields) = &mut doc {
            let mut with_schema = serde_json::Map::new();
            with_schema.insert("schema".into(), format!("gitlab-provision.{kind}/{SCHEMA_VERSION}").into());
            with_schema.extend(std::mem::take(fields));
            doc = serde_json::Value::Object(with_schema);
        }
        let mut stdout = std::io::stdout().lock();
        if self.events_as_json {
            writeln!(stdout, "{}", serde_json::to_string(&doc)?)?;
        } else {
            writeln!(stdout, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Ok(())
    }

    /// One JSON document on a line of its own (a stream of them: `logs --json`).
    pub fn json_line(&self, kind: &str, value: &impl Serialize) -> anyhow::Result<()> {
        let mut doc = serde_json::to_value(value)?;
        if let serde_json::Value::Object(fields) = &mut doc {
            let mut with_schema = serde_json::Map::new();
            with_schema.insert("schema".into(), format!("gitlab-provision.{kind}/{SCHEMA_VERSION}").into());
            with_schema.extend(std::mem::take(fields));
            doc = serde_json::Value::Object(with_schema);
        }
        write_stdout(&format!("{doc}\n"));
        Ok(())
    }

    /// The final JSON document of a command that streamed its progress as JSON events.
    pub fn json_if_events(&self, kind: &str, value: &impl Serialize) -> anyhow::Result<()> {
        if self.events_as_json { self.json(kind, value) } else { Ok(()) }
    }

    /// A failure, cause first: the error (with the failing step and AWS's code and message),
    /// where things stand, then one line saying what to do next.
    pub fn error(&self, failure: &CliError) {
        self.clear_bars();
        let cause = format!("{:#}", failure.error);
        let mut lines = vec![format!("{} {}", self.paint("error:", Tone::Bad), cause)];
        lines.extend(failure.context.iter().map(|c| format!("  {c}")));
        if let Some(help) = failure.help.clone().or_else(|| crate::exit::help_in(&failure.error)) {
            lines.push(format!("{} {help}", self.paint("help:", Tone::Bold)));
        }
        eprintln!("{}", lines.join("\n"));
    }

    /// Asks on the terminal; the answer, trimmed.
    pub fn ask(&self, question: &str) -> anyhow::Result<String> {
        self.clear_bars();
        eprint!("{question} ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(answer.trim().to_string())
    }

    /// What the run collapsed: steps that changed nothing, steps never started.
    pub fn tally(&self) {
        // Taken, not read: a command that converges several times (upgrade's hops) counts each.
        let tally = std::mem::take(&mut *self.tally.lock().unwrap_or_else(|p| p.into_inner()));
        let mut parts = Vec::new();
        if tally.unchanged > 0 {
            parts.push(format!("{} unchanged", tally.unchanged));
        }
        for (why, count) in &tally.skipped {
            parts.push(format!("{count} not run ({why})"));
        }
        if !parts.is_empty() && !self.quiet && !self.events_as_json {
            self.say(&self.paint(&parts.join(", "), Tone::Dim));
        }
    }

    fn clear_bars(&self) {
        if let Some(bars) = &self.bars {
            let mut by_step = bars.by_step.lock().unwrap_or_else(|p| p.into_inner());
            for (_, bar) in by_step.drain() {
                bar.finish_and_clear();
            }
        }
    }

    fn line(&self, step: &str, text: &str) {
        eprintln!("[{:>6.1}s] {step:<24} {}", self.started.elapsed().as_secs_f64(), shorten_arns(text));
    }

    fn json_event(&self, event: &Event) {
        let (kind, step, seconds, text, changed) = match event {
            Event::Started { step, description } => (EventKind::Started, step, None, description.as_str(), None),
            Event::Progress { step, message } => (EventKind::Progress, step, None, message.as_str(), None),
            Event::Finished { step, elapsed, summary, changed } => {
                (EventKind::Finished, step, Some(elapsed), summary.as_str(), Some(*changed))
            }
            Event::Failed { step, elapsed, error } => (EventKind::Failed, step, Some(elapsed), error.as_str(), None),
            Event::Skipped { step, reason } => (EventKind::Skipped, step, None, reason.as_str(), None),
        };
        let doc = EventDoc {
            event: kind,
            step: step.clone(),
            seconds: seconds.map(Duration::as_secs_f64),
            message: text.to_string(),
            changed,
        };
        let _ = self.json_line("event", &doc);
    }
}

/// One line of a command's progress as `--json` streams it.
#[derive(Serialize, schemars::JsonSchema)]
pub struct EventDoc {
    pub event: EventKind,
    pub step: String,
    /// How long it took, for finished and failed steps.
    pub seconds: Option<f64>,
    pub message: String,
    /// Whether it changed anything, for finished steps.
    pub changed: Option<bool>,
}

#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Started,
    Progress,
    Finished,
    Failed,
    Skipped,
}

/// A plain text table: columns as wide as their widest cell on screen (colour codes and wide
/// characters measured as they show), two spaces apart, no borders.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header(header.iter().copied());
    for row in rows {
        table.add_row(row.iter().map(String::as_str));
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Text from outside (a log line) as a terminal may safely show it: control characters (an
/// escape sequence that would move the cursor, clear the screen or fake colour) written out as
/// escapes, tabs kept.
pub fn escaped(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.to_string();
    }
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// Escapes what the user typed before it reaches a terminal.
pub fn shown(text: &str) -> String {
    if text.chars().any(char::is_control) { format!("{text:?}") } else { text.to_string() }
}

/// An id as people read it. For an ARN, its resource part, at most its type and its last two
/// names ("listener/app/s/1a/2b" -> "listener/…/1a/2b"): enough to tell the stack's resources
/// apart at a glance; `--wide` shows the whole ARN.
pub fn short_id(id: &str) -> String {
    if !id.starts_with("arn:") {
        return id.to_string();
    }
    let tail = id.splitn(6, ':').nth(5).unwrap_or(id);
    let parts: Vec<&str> = tail.split('/').collect();
    if parts.len() > 3 { format!("{}/…/{}", parts[0], parts[parts.len() - 2..].join("/")) } else { tail.to_string() }
}

/// `text` with every ARN in it shortened as by [`short_id`], for tables people read.
pub fn shorten_arns(text: &str) -> String {
    text.split(' ')
        .map(|word| if word.starts_with("arn:") { short_id(word) } else { word.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "2026-11-28T20:50:55.403945Z" as a table shows it: "2026-11-28 20:50 UTC" (JSON keeps it whole).
pub fn minute_utc(rfc3339: &str) -> String {
    match rfc3339.get(..16) {
        Some(minute) if rfc3339.ends_with('Z') => format!("{} UTC", minute.replacen('T', " ", 1)),
        _ => rfc3339.to_string(),
    }
}

/// A size as people read it: "6.30 KiB".
pub fn human_bytes(bytes: i64) -> String {
    indicatif::HumanBytes(bytes.max(0).unsigned_abs()).to_string()
}

/// Writes to stdout; a reader that went away (`| head`) is not a reason to stop a run half-way
/// or to panic, so a failed write is dropped.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn paint(on: bool, text: &str, tone: Tone) -> String {
    if on {
        let style = tone.style();
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Observer for Printer {
    fn event(&self, event: Event) {
        if self.events_as_json {
            return self.json_event(&event);
        }
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bars) = &self.bars else {
            match event {
                Event::Started { step, description } if self.verbose => {
                    self.line(&step, &format!("started: {description}"))
                }
                Event::Started { .. } => {}
                Event::Progress { step, message } if !self.quiet => self.line(&step, &message),
                Event::Progress { .. } => {}
                Event::Finished { step, elapsed, summary, changed } => {
                    if changed || self.verbose {
                        if !self.quiet {
                            self.line(&step, &format!("done in {}: {summary}", secs(elapsed)));
                        }
                    } else {
                        tally.unchanged += 1;
                    }
                }
                Event::Failed { step, elapsed, error } => {
                    self.line(&step, &format!("{} after {}: {error}", self.paint("FAILED", Tone::Bad), secs(elapsed)))
                }
                Event::Skipped { step, reason } => {
                    *tally.skipped.entry(reason.as_str()).or_default() += 1;
                    if self.verbose {
                        self.line(&step, &format!("not run: {}", reason.as_str()));
                    }
                }
            }
            return;
        };
        let mut by_step = bars.by_step.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Started { step, description } => {
                let bar = bars.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:<24} {wide_msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(step.clone());
                bar.set_message(description);
                bar.enable_steady_tick(Duration::from_millis(120));
                by_step.insert(step, bar);
            }
            Event::Progress { step, message } => {
                if let Some(bar) = by_step.get(&step) {
                    bar.set_message(shorten_arns(&message));
                }
            }
            Event::Finished { step, elapsed, summary, changed } => {
                let bar = by_step.remove(&step);
                if changed {
                    let mark = self.paint("✓", Tone::Good);
                    keep(
                        &bars.multi,
                        bar,
                        &format!("{mark} {step:<24} {} ({})", shorten_arns(&summary), secs(elapsed)),
                    );
                } else {
                    tally.unchanged += 1;
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                }
            }
            Event::Failed { step, elapsed, error } => {
                let mark = self.paint("✗", Tone::Bad);
                let failed = self.paint("FAILED", Tone::Bad);
                keep(
                    &bars.multi,
                    by_step.remove(&step),
                    &format!("{mark} {step:<24} {failed} after {}: {error}", secs(elapsed)),
                );
            }
            Event::Skipped { step, reason } => {
                *tally.skipped.entry(reason.as_str()).or_default() += 1;
                if let Some(bar) = by_step.remove(&step) {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

/// Turns a step's bar into a line that stays on screen: printed above the live bars, so it
/// scrolls into the terminal's history instead of being redrawn (and erased) with them.
fn keep(multi: &MultiProgress, bar: Option<ProgressBar>, text: &str) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let _ = multi.println(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_shorten_to_their_resource() {
        assert_eq!(
            short_id("arn:aws:elasticloadbalancing:us-east-1:123:loadbalancer/app/web/abc"),
            "loadbalancer/…/web/abc"
        );
        assert_eq!(
            short_id("arn:aws:elasticloadbalancing:us-east-1:123:listener/app/web/abc/def"),
            "listener/…/abc/def"
        );
        assert_eq!(
            short_id("arn:aws:ecs:us-east-1:123:task-definition/calm-gitlab:1"),
            "task-definition/calm-gitlab:1"
        );
        assert_eq!(short_id("vpc-1"), "vpc-1");
        assert_eq!(
            shorten_arns(
                "arn:aws:ecs:r:1:service/calm/gitlab: task_definition arn:aws:ecs:r:1:task-definition/calm-gitlab:1 -> x"
            ),
            "service/calm/gitlab: task_definition task-definition/calm-gitlab:1 -> x"
        );
    }
}
