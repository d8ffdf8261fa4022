//! Ctrl-C: every wait polls this flag at least every [`POLL`] and, once it is
//! set, cancels the jobs it waits on and returns [`crate::Error::Interrupted`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The longest a wait sleeps before it looks at the flag again.
pub const POLL: Duration = Duration::from_millis(100);

/// Installs a SIGINT/SIGTERM handler that sets the flag; a second Ctrl-C
/// exits at once (runner processes die with their parent).
pub fn install_ctrl_c_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    });
}

/// Sets the flag as Ctrl-C would (bindings that catch signals themselves).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn is_interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Clears the flag, after the interrupted operation has been reported.
pub fn clear() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}
