//! The init's own console lines, prefixed so the host can filter them.

/// The prefix of every line the init itself prints.
pub const PREFIX: &str = "hyperstart: ";

/// Prints one prefixed line on the console (stderr of PID 1 is /dev/console).
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{}{}", $crate::console::PREFIX, format_args!($($arg)*))
    };
}
pub(crate) use say;
