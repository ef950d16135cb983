//! Stopping a run cleanly when the scheduler asks: SIGTERM (Slurm preemption,
//! `scancel`, `scontrol requeue`), SIGUSR1 (Slurm's `--signal` warning before
//! the time limit) and SIGINT (Ctrl-C).
//!
//! A signal only raises a flag; the run loop looks at it before every training
//! step and before every task. It then abandons the step (and the epoch it is
//! in) and stops with [`Preempted`]: what is on disk is the last task or epoch
//! checkpoint, which is exactly the state a resumed run continues from, so the
//! resumed run is bit-identical to an uninterrupted one. The epoch in progress
//! is redone, which is why sweeps checkpoint every epoch. A second signal of
//! the second Ctrl-C kills.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

pub use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The exit code that asks the array task's script to requeue the run
/// (EX_TEMPFAIL): the run stopped on the time-limit warning and has more to do.
pub const EXIT_REQUEUE: u8 = 75;

/// The environment variable through which a local sweep queue tells its
/// runs its pid: a run whose parent is no longer that process stops.
pub const QUEUE_PID_ENV: &str = "PROMPTCL_QUEUE_PID";

static FLAG: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicUsize> {
    FLAG.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Installs the handlers (the CLI does, before a run); safe to call twice.
pub fn install() -> std::io::Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    // Registered before the flag, this makes a second Ctrl-C kill. SIGTERM is
    // not armed so: Slurm may deliver it to the run and its script both.
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register_conditional_default(SIGINT, armed.clone())?;
    signal_hook::flag::register(SIGINT, armed)?;
    for sig in [SIGTERM, SIGUSR1, SIGINT] {
        signal_hook::flag::register_usize(sig, flag().clone(), sig as usize)?;
    }
    let _ = DONE.set(());
    if let Some(queue) = std::env::var(QUEUE_PID_ENV).ok().and_then(|p| p.parse::<u32>().ok()) {
        watch_parent(queue);
    }
    Ok(())
}

/// A run started by a local queue stops (as on SIGTERM) when the queue dies,
/// rather than running on as an orphan the restarted queue knows nothing of.
fn watch_parent(queue: u32) {
    std::thread::spawn(move || loop {
        if std::os::unix::process::parent_id() != queue {
            request(SIGTERM);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    });
}

/// Raises the flag as the signal `sig` would (tests, and the parent watch).
pub fn request(sig: i32) {
    flag().store(sig as usize, Ordering::SeqCst);
}

/// The signal that asked the run to stop, if any.
pub fn requested() -> Option<i32> {
    match flag().load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

/// Clears the flag (tests run several runs in one process).
pub fn clear() {
    flag().store(0, Ordering::SeqCst);
}

/// The run stopped on a signal; everything up to the last checkpoint is kept.
#[derive(Debug)]
pub struct Preempted {
    pub signal: i32,
    /// 1-based task the run was in; 0 for a sweep's queue.
    pub task: usize,
}

impl std::error::Error for Preempted {}

impl std::fmt::Display for Preempted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.task {
            0 => write!(f, "stopped by {}: run the sweep again to go on", signal_name(self.signal)),
            t => write!(f, "stopped by {} at task {t}: resume continues from the last checkpoint", signal_name(self.signal)),
        }
    }
}

impl Preempted {
    /// SIGUSR1 (the time-limit warning) asks for a requeue; the others exit as
    /// a process killed by that signal would report itself (128 + n).
    pub fn exit_code(&self) -> u8 {
        if self.signal == SIGUSR1 {
            EXIT_REQUEUE
        } else {
            128u8.saturating_add(self.signal as u8)
        }
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGUSR1 => "SIGUSR1",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}
