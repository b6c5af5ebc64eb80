//! End-to-end test harness: drives the real binary inside the Xen test host.
