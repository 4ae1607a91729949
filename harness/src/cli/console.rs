//! What `netfault run` shows while it runs: one verdict line per scenario as it finishes, the verdict coloured
//! on a terminal (never with `NO_COLOR` set or `TERM=dumb`), and on a terminal a progress line (running, done,
//! the longest-running scenario) that each new result line replaces.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::report::{Status, Summary};
use crate::scenario::{printable, printable_path};

/// Whether to colour a stream: only a terminal, and neither `NO_COLOR` (any non-empty value, as
/// no-color.org says) nor `TERM=dumb`.
pub fn colour_wanted(terminal: bool, no_color: Option<&OsStr>, term: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty) && term != Some(OsStr::new("dumb"))
}

/// Whether a progress line may be drawn on a stream: only a terminal that understands `\r` and erasing.
pub fn progress_wanted(terminal: bool, term: Option<&OsStr>) -> bool {
    terminal && term != Some(OsStr::new("dumb"))
}

/// The verdict word of a result line, padded to one width, coloured when asked (green, red, bold magenta).
pub fn verdict_word(status: Status, colour: bool) -> String {
    let word = status.label();
    let code = match status {
        Status::Pass => "32",
        Status::Fail => "31",
        Status::Error => "1;35",
        Status::NotApplicable => "33",
    };
    if colour {
        format!("\x1b[{code}m{word}\x1b[0m")
    } else {
        word.to_string()
    }
}

/// One result line: verdict, name, duration, report folder.
pub fn result_line(summary: &Summary, colour: bool) -> String {
    format!(
        "{} {:<40} {:>8.3}s  {}",
        verdict_word(summary.status, colour),
        printable(&summary.name),
        summary.duration,
        printable_path(&summary.report)
    )
}

/// The progress line: `running 3, done 47 of 50; longest keepalive/idle 12.3s`, cut to `width` characters.
pub fn progress_text(
    running: usize,
    done: usize,
    total: usize,
    longest: Option<(&str, Duration)>,
    width: usize,
) -> String {
    let mut text = format!("running {running}, done {done} of {total}");
    if let Some((name, elapsed)) = longest {
        text.push_str(&format!("; longest {name} {:.1}s", elapsed.as_secs_f64()));
    }
    text.chars().take(width.saturating_sub(1)).collect()
}

/// The live display of one run: result lines on stdout, the progress line on stderr.
pub struct Console {
    colour: bool,
    progress: bool,
    total: usize,
    names: Vec<String>,
    running: BTreeMap<usize, Instant>,
    done: usize,
    /// Whether a progress line is on the screen now.
    drawn: bool,
}

impl Console {
    /// A display for jobs with these names, deciding colour and progress from the environment and whether
    /// stdout and stderr are terminals.
    pub fn new(names: Vec<String>) -> Console {
        let term = std::env::var_os("TERM");
        let no_color = std::env::var_os("NO_COLOR");
        Console {
            colour: colour_wanted(std::io::stdout().is_terminal(), no_color.as_deref(), term.as_deref()),
            progress: progress_wanted(std::io::stderr().is_terminal(), term.as_deref()),
            total: names.len(),
            names,
            running: BTreeMap::new(),
            done: 0,
            drawn: false,
        }
    }

    pub fn colour(&self) -> bool {
        self.colour
    }

    pub fn started(&mut self, index: usize) {
        self.running.insert(index, Instant::now());
        self.redraw();
    }

    /// Prints the result line (and the messages under it) of a finished job.
    pub fn finished(&mut self, index: usize, summary: &Summary) {
        self.running.remove(&index);
        self.done += 1;
        self.clear();
        let mut text = result_line(summary, self.colour);
        for message in &summary.messages {
            for line in message.lines() {
                text.push_str("\n      ");
                text.push_str(&printable(line));
            }
        }
        println!("{text}");
        self.redraw();
    }

    /// Redraws the progress line (the longest-running scenario's time goes on).
    pub fn redraw(&mut self) {
        if !self.progress {
            return;
        }
        let now = Instant::now();
        let longest = self
            .running
            .iter()
            .min_by_key(|(_, started)| **started)
            .map(|(index, started)| (self.names[*index].as_str(), now - *started));
        let line = progress_text(self.running.len(), self.done, self.total, longest, terminal_width());
        let mut stderr = std::io::stderr().lock();
        // A progress line that cannot be drawn is no reason to stop the run.
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Erases the progress line, before a result line or at the end.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.drawn = false;
        }
    }
}

/// The terminal's width in columns (`stty size`), 80 when stderr is not a terminal.
fn terminal_width() -> usize {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass; a failure leaves it zeroed.
    let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    if rc == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn colour_only_on_a_terminal_without_no_color_or_a_dumb_terminal() {
        let xterm = Some(OsStr::new("xterm-256color"));
        assert!(colour_wanted(true, None, xterm));
        assert!(colour_wanted(true, None, None));
        assert!(!colour_wanted(false, None, xterm), "not a terminal");
        assert!(!colour_wanted(true, Some(OsStr::new("1")), xterm), "NO_COLOR=1");
        assert!(colour_wanted(true, Some(OsStr::new("")), xterm), "an empty NO_COLOR does not count");
        assert!(!colour_wanted(true, None, Some(OsStr::new("dumb"))));
        assert!(progress_wanted(true, xterm));
        assert!(!progress_wanted(false, xterm));
        assert!(!progress_wanted(true, Some(OsStr::new("dumb"))));
    }

    #[test]
    fn result_lines_are_plain_or_coloured_verdict_name_duration_report() {
        let summary = Summary {
            name: "keepalive/idle".into(),
            status: Status::Fail,
            duration: 14.3012,
            setup_ms: 1.0,
            teardown_ms: 1.0,
            report: PathBuf::from("reports/keepalive/idle"),
            messages: vec![],
        };
        let plain = result_line(&summary, false);
        assert_eq!(plain, format!("FAIL  {:<40}   14.301s  reports/keepalive/idle", "keepalive/idle"));
        assert!(!plain.contains('\x1b'));
        let coloured = result_line(&summary, true);
        assert!(coloured.starts_with("\x1b[31mFAIL \x1b[0m keepalive/idle"), "{coloured:?}");
        assert_eq!(verdict_word(Status::Pass, true), "\x1b[32mPASS \x1b[0m");
        assert_eq!(verdict_word(Status::Error, false), "ERROR");
    }

    #[test]
    fn the_progress_line_says_running_done_and_the_longest_and_fits_the_terminal() {
        let longest = Some(("keepalive/idle", Duration::from_millis(12_345)));
        assert_eq!(progress_text(3, 47, 50, longest, 80), "running 3, done 47 of 50; longest keepalive/idle 12.3s");
        assert_eq!(progress_text(0, 0, 5, None, 80), "running 0, done 0 of 5");
        assert_eq!(progress_text(3, 47, 50, longest, 20), "running 3, done 47 ");
    }
}
