//! hyperstart-pv: the static init (PID 1) of every hyperxl guest.

fn main() {}
