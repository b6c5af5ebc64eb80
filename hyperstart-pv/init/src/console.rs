//! The init's own console lines, prefixed so the host can filter them.

pub use hyperxl_contract::console::PREFIX;

/// Prints one prefixed line on the console (stderr of PID 1 is /dev/console).
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{}{}", $crate::console::PREFIX, format_args!($($arg)*))
    };
}
pub(crate) use say;
