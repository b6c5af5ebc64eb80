//! Smoke test of the real libxl path, for a Xen dom0 (e.g. the Xen test host):
//! create paused, list, console tty, unpause, wait for death, destroy; then a
//! second domain stopped with `shutdown`.
//!
//! ```sh
//! lifecycle pv|pvh KERNEL [RAMDISK]
//! ```
//!
//! With `LIFECYCLE_DISK=PATH` the domains get PATH as a read-only `xvda`.

use std::time::{Duration, Instant};

use libxl::{Context, Disk, DomainConfig, DomainOps, DomainType, LogLevel};

fn main() {
    if let Err(e) = run() {
        eprintln!("lifecycle: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (domain_type, kernel) = match args.as_slice() {
        [t, k, ..] if t == "pv" => (DomainType::Pv, k),
        [t, k, ..] if t == "pvh" => (DomainType::Pvh, k),
        _ => return Err("usage: lifecycle pv|pvh KERNEL [RAMDISK]".into()),
    };
    let config = |name: &str| {
        let mut b = DomainConfig::builder(name)
            .domain_type(domain_type)
            .kernel(kernel)
            .cmdline("console=hvc0")
            .memory_mib(64);
        if let Some(r) = args.get(2) {
            b = b.ramdisk(r);
        }
        if let Some(disk) = std::env::var_os("LIFECYCLE_DISK") {
            b = b.disk(Disk::new(disk, "xvda").readonly());
        }
        b.build()
    };

    let ctx = Context::with_log_level(LogLevel::Warn)?;
    let t = Instant::now();
    let domid = ctx.create_paused(&config("smoke-a")?)?;
    println!("created paused: domid {domid} in {:?}", t.elapsed());
    let info = ctx.list()?.into_iter().find(|d| d.domid == domid);
    println!("list: {info:?}");
    println!(
        "domid_for_name(smoke-a) = {:?}",
        ctx.domid_for_name("smoke-a")?
    );
    println!("domid_for_name(nope) = {:?}", ctx.domid_for_name("nope")?);
    println!("console tty: {:?}", ctx.console_tty(domid));
    println!(
        "duplicate name: {:?}",
        ctx.create_paused(&config("smoke-a")?).err()
    );
    ctx.unpause(domid)?;
    println!("unpaused; info {:?}", ctx.domain_info(domid)?);
    let exit = ctx.wait_for_death(domid, Duration::from_secs(3));
    println!("wait_for_death(3 s): {exit:?}");
    let exit = ctx.wait_for_death(domid, Duration::from_secs(120));
    println!("wait_for_death(120 s): {exit:?}");
    ctx.destroy(domid)?;
    println!("destroyed; info now {:?}", ctx.domain_info(domid)?);
    println!("destroy again: {:?}", ctx.destroy(domid).err());
    println!(
        "wait_for_death(gone): {:?}",
        ctx.wait_for_death(domid, Duration::ZERO)
    );

    let b = ctx.create_paused(&config("smoke-b")?)?;
    ctx.unpause(b)?;
    std::thread::sleep(Duration::from_secs(2));
    println!("shutdown smoke-b: {:?}", ctx.shutdown(b));
    println!(
        "wait_for_death(b, 120 s): {:?}",
        ctx.wait_for_death(b, Duration::from_secs(120))
    );
    ctx.destroy(b)?;
    println!(
        "remaining: {:?}",
        ctx.list()?
            .iter()
            .map(|d| (d.domid, d.name.clone()))
            .collect::<Vec<_>>()
    );
    Ok(())
}
