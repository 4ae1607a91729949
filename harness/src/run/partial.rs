//! A scenario process's report when it may not finish: what the run has recorded is kept where a watchdog
//! thread can write it out (result.json in its killed shape, timeline.txt) into the staging folder before the
//! runner kills the process at its deadline plus [`CHILD_GRACE`], whatever the run's own threads are stuck in.
//! The run's data flows one way: the engine records into [`Progress`], the watchdog only reads it, and a run
//! that finishes writes its full report over the partial one.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::report::{self, Recorded};
use crate::run::clock::Clock;
use crate::run::runner::CHILD_GRACE;
use crate::run::{engine, priority};
use crate::scenario::plan::Plan;
use crate::timeline::{Event, Timeline};

/// How long past its deadline a run that has not written its report gets its partial one written: before the
/// runner's kill ([`CHILD_GRACE`] past the deadline as the runner counts it, from the programs' start line it
/// reads a little after the deadline's start), with time left to write it on a starved machine.
pub const PARTIAL_AFTER: Duration = Duration::from_secs(12);
const _: () = assert!(PARTIAL_AFTER.as_secs() + 5 <= CHILD_GRACE.as_secs());

/// What a scenario process is doing, as its partial report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    SettingUp,
    Running,
    ReadingCounters,
    StoppingWire,
    StoppingObservers,
    StoppingTracer,
    StoppingCaptures,
    EndingPrograms,
    Annotating,
    ClosingFaults,
    ClosingNamespaces,
    ReadingSysctls,
    Judging,
}

impl Stage {
    pub fn describe(self) -> &'static str {
        match self {
            Stage::SettingUp => "setting up",
            Stage::Running => "running the programs",
            Stage::ReadingCounters => "reading the kernel's counters",
            Stage::StoppingWire => "stopping the wire",
            Stage::StoppingObservers => "stopping the socket observers",
            Stage::StoppingTracer => "stopping the transition tracer",
            Stage::StoppingCaptures => "stopping the captures",
            Stage::EndingPrograms => "waiting for the programs to end",
            Stage::Annotating => "annotating the timeline",
            Stage::ClosingFaults => "removing the faults' nftables tables",
            Stage::ClosingNamespaces => "closing the namespaces",
            Stage::ReadingSysctls => "waiting for the sysctl readers",
            Stage::Judging => "judging the run",
        }
    }
}

/// What a run has recorded so far, shared by the engine (which records) and the watchdog (which may write it).
pub struct Progress {
    state: Mutex<State>,
    /// Signalled when the run starts its programs or finishes.
    changed: Condvar,
}

struct State {
    stage: Stage,
    events: Vec<Event>,
    /// The run's clock and deadline, once its programs start.
    started: Option<(Clock, Instant)>,
    /// The run wrote (or is writing) its own report: the watchdog has nothing to do.
    finished: bool,
    /// The engine took the events back for its report: a partial report has none to show, only the stage.
    taken: bool,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            state: Mutex::new(State {
                stage: Stage::SettingUp,
                events: Vec::new(),
                started: None,
                finished: false,
                taken: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked holding the lock left plain data behind: still worth writing out.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The run is at `stage` now. (The harness's own tests may make the calling thread hang here for good:
    /// [`crate::selftest::hang_if_chosen`].)
    pub fn stage(&self, stage: Stage) {
        self.lock().stage = stage;
        crate::selftest::hang_if_chosen(stage.describe());
    }

    /// The programs start now, on `clock`, with `deadline`.
    pub fn started(&self, clock: &Clock, deadline: Instant) {
        let mut state = self.lock();
        state.stage = Stage::Running;
        state.started = Some((clock.clone(), deadline));
        drop(state);
        self.changed.notify_all();
    }

    pub fn record(&self, event: Event) {
        self.lock().events.push(event);
    }

    pub fn record_all(&self, events: impl IntoIterator<Item = Event>) {
        self.lock().events.extend(events);
    }

    /// Every event recorded, for the run's own report: from here on a partial report shows the stage the run
    /// is at, and no events (the pcaps hold the packets).
    pub fn take_events(&self) -> Vec<Event> {
        let mut state = self.lock();
        state.taken = true;
        std::mem::take(&mut state.events)
    }

    /// The run writes its own report now (result.json last, so that one killed while writing it keeps the
    /// partial result.json); waits for a partial report being written to be done, so the run's own is written
    /// over it, never under it.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.changed.notify_all();
    }

    /// Starts the watchdog of this run of `plan`, staging its report in `staging`: at [`PARTIAL_AFTER`] past
    /// the deadline, if the run has not finished, it writes the partial report. A real-time thread where the
    /// kernel allows it, so that the run's own real-time threads, spinning or stuck, cannot starve it.
    pub fn watch(self: &Arc<Progress>, plan: Plan, staging: PathBuf) -> Result<()> {
        let progress = Arc::clone(self);
        thread::Builder::new()
            .name("partial-report".into())
            .spawn(move || {
                let _ = priority::raise_current_thread();
                progress.watchdog(&plan, &staging);
            })
            .map(drop)
            .map_err(|e| Error::sys("start the partial report's watchdog thread", e))
    }

    fn watchdog(&self, plan: &Plan, staging: &std::path::Path) {
        let mut state = self.lock();
        let due = loop {
            if state.finished {
                return;
            }
            if let Some((_, deadline)) = &state.started {
                break *deadline + PARTIAL_AFTER;
            }
            state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        };
        while !state.finished && Instant::now() < due {
            let left = due.saturating_duration_since(Instant::now());
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        if state.finished {
            return;
        }
        // Written holding the lock: the run's own report, if it comes, waits for this one and replaces it.
        if let Err(e) = write_partial(plan, &state, staging) {
            eprintln!("netfault: the partial report could not be written: {e}");
        }
    }
}

/// Writes the partial report of what `state` holds.
fn write_partial(plan: &Plan, state: &State, staging: &std::path::Path) -> Result<()> {
    // Empty once taken: the run's own report has them, and the run is past its recording.
    let mut timeline = Timeline::new(if state.taken { Vec::new() } else { state.events.clone() });
    engine::annotate_faults(&mut timeline, plan);
    engine::annotate_impairments(&mut timeline);
    let (at, deadline_hit) = match &state.started {
        Some((clock, deadline)) => (Some(clock.now()), Instant::now() >= *deadline),
        None => (None, false),
    };
    let recorded = Recorded { stage: state.stage.describe(), at, deadline_hit, timeline: &timeline };
    report::write_killed(plan, &recorded, staging)
}
