//! Interruption: SIGINT (Ctrl-C), SIGTERM and SIGHUP ask a running command
//! to stop cleanly. Long operations poll one flag and unwind: a backup or
//! import cancels its pending snapshot, a restore or export removes its
//! partial output, `gc` abandons the compaction under way (its marker
//! undoes it), `verify` stops reading. The process then exits with 128 +
//! the signal's number (130, 143, 129) and prints no success.
//!
//! A second signal ends the process at once with its own code, for the
//! operator who does not want to wait: what a kill leaves (a pending
//! snapshot stays pending until `cancel` or its timeout) is what it leaves.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

/// The signals that interrupt a command.
const INTERRUPTING: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Set by the first interrupting signal; the library's operations take it
/// as their cancel flag.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// The number of the first interrupting signal (0: none yet).
static RECEIVED: LazyLock<Arc<AtomicUsize>> = LazyLock::new(Arc::default);

/// Installs the handlers. Registration order matters: the handler that ends
/// the process on a second signal must run before the one that sets the
/// flag, so the first signal only sets it.
pub fn install() -> std::io::Result<()> {
    for signal in INTERRUPTING {
        signal_hook::flag::register_conditional_shutdown(
            signal,
            exit_code_of(signal),
            Arc::clone(&INTERRUPTED),
        )?;
        signal_hook::flag::register_usize(
            signal,
            Arc::clone(&RECEIVED),
            usize::try_from(signal).unwrap_or(0),
        )?;
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED))?;
    }
    Ok(())
}

/// The cancel flag to hand to long operations.
pub fn flag() -> &'static AtomicBool {
    &INTERRUPTED
}

/// Whether an interrupting signal has arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// The name of the signal that interrupted the command.
pub fn received_name() -> &'static str {
    match i32::try_from(RECEIVED.load(Ordering::Acquire)).unwrap_or(0) {
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "SIGINT",
    }
}

/// The exit status after an interruption: 128 + the signal's number
/// (SIGINT when the flag was set some other way).
pub fn exit_code() -> u8 {
    let signal = i32::try_from(RECEIVED.load(Ordering::Acquire))
        .ok()
        .filter(|signal| *signal != 0)
        .unwrap_or(SIGINT);
    u8::try_from(exit_code_of(signal)).unwrap_or(130)
}

fn exit_code_of(signal: i32) -> i32 {
    128 + signal
}
