//! The only place that decides how progress looks: bars on a terminal, plain timestamped lines
//! otherwise (CI logs, pipes). Progress goes to stderr; results go to stdout.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{Event, Observer};

pub struct Printer {
    started: Instant,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    by_step: Mutex<HashMap<String, ProgressBar>>,
}

impl Printer {
    /// Bars only on an interactive stderr and when logs are not being shown (they would tear
    /// the bars apart).
    pub fn new(verbose: bool) -> Self {
        let interactive = std::io::stderr().is_terminal() && !verbose && std::env::var_os("CI").is_none();
        let bars = interactive.then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            by_step: Mutex::new(HashMap::new()),
        });
        Printer { started: Instant::now(), bars }
    }

    fn line(&self, step: &str, text: &str) {
        eprintln!("[{:>6.1}s] {step:<22} {text}", self.started.elapsed().as_secs_f64());
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Observer for Printer {
    fn event(&self, event: Event) {
        let Some(bars) = &self.bars else {
            match event {
                Event::Started { step, description } => self.line(&step, &format!("started: {description}")),
                Event::Progress { step, message } => self.line(&step, &message),
                Event::Finished { step, elapsed, summary } => {
                    self.line(&step, &format!("done in {}: {summary}", secs(elapsed)))
                }
                Event::Failed { step, elapsed, error } => {
                    self.line(&step, &format!("FAILED after {}: {error}", secs(elapsed)))
                }
                Event::Skipped { step, reason } => self.line(&step, &format!("not run: {reason}")),
            }
            return;
        };
        let mut by_step = bars.by_step.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Started { step, description } => {
                let bar = bars.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:<22} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(step.clone());
                bar.set_message(description);
                bar.enable_steady_tick(Duration::from_millis(120));
                by_step.insert(step, bar);
            }
            Event::Progress { step, message } => {
                if let Some(bar) = by_step.get(&step) {
                    bar.set_message(message);
                }
            }
            Event::Finished { step, elapsed, summary } => {
                finish(&bars.multi, by_step.remove(&step), &format!("✓ {step:<22} {summary} ({})", secs(elapsed)))
            }
            Event::Failed { step, elapsed, error } => finish(
                &bars.multi,
                by_step.remove(&step),
                &format!("✗ {step:<22} FAILED after {}: {error}", secs(elapsed)),
            ),
            Event::Skipped { step, reason } => {
                finish(&bars.multi, by_step.remove(&step), &format!("- {step:<22} not run: {reason}"))
            }
        }
    }
}

fn finish(multi: &MultiProgress, bar: Option<ProgressBar>, text: &str) {
    match bar {
        Some(bar) => {
            bar.set_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            bar.finish_with_message(text.to_string());
        }
        None => {
            let _ = multi.println(text);
        }
    }
}
