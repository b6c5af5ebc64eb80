//! The domain configuration in plain Rust, validated before it reaches libxl.
//!
//! [`DomainConfig::builder`] collects the settings; [`DomainConfigBuilder::build`]
//! checks them and returns a [`DomainConfig`], which
//! [`crate::RawDomainConfig`] turns into libxl's `libxl_domain_config`.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A configuration refused before it reached libxl.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The domain name is empty.
    #[error("domain name is empty")]
    EmptyName,
    /// The domain name has characters xenstore and `xl` cannot handle.
    #[error("domain name {0:?} contains a control character or '/'")]
    InvalidName(String),
    /// The domain name is all digits, which tools would read as a domain id.
    #[error("domain name {0:?} is all digits and would be taken for a domain id")]
    NumericName(String),
    /// No kernel, or an empty kernel path.
    #[error("no kernel given")]
    EmptyKernel,
    /// A path or string holds a NUL byte, which C cannot carry.
    #[error("{0} contains a NUL byte")]
    NulByte(&'static str),
    /// Memory is zero.
    #[error("memory must be at least 1 MiB")]
    ZeroMemory,
    /// Memory in KiB does not fit in 64 bits.
    #[error("memory of {0} MiB is too large")]
    MemoryTooLarge(u64),
    /// The maximum memory is below the initial memory.
    #[error("max memory {max_mib} MiB is below memory {mib} MiB")]
    MaxMemoryBelowMemory {
        /// Initial memory in MiB.
        mib: u64,
        /// Maximum memory in MiB.
        max_mib: u64,
    },
    /// The vCPU count is zero.
    #[error("vcpus must be at least 1")]
    ZeroVcpus,
    /// The vCPU count is above what a PVH guest can have.
    #[error("{0} vcpus is more than the limit of {MAX_VCPUS}")]
    TooManyVcpus(u32),
    /// A disk has an empty target path.
    #[error("disk {0}: empty target path")]
    EmptyDiskTarget(String),
    /// A disk has an empty or malformed virtual device name.
    #[error("disk vdev {0:?} is not a name such as \"xvda\"")]
    InvalidVdev(String),
    /// Two disks use the same virtual device name.
    #[error("disk vdev {0:?} is used twice")]
    DuplicateVdev(String),
    /// A NIC's bridge or backend interface name is not a valid interface name.
    #[error("nic: {0:?} is not a valid interface name")]
    InvalidIfname(String),
    /// A multicast MAC (the lowest bit of the first byte set) cannot be a NIC's.
    #[error("nic: MAC {0} is a multicast address")]
    MulticastMac(String),
}

/// The largest vCPU count accepted (Xen's limit for HVM/PVH guests).
pub const MAX_VCPUS: u32 = 128;

/// The kind of Xen guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomainType {
    /// PVH: hardware virtualisation without a device model (needs VT-x/AMD-V).
    #[default]
    Pvh,
    /// Classic paravirtualised guest (no hardware virtualisation needed).
    Pv,
}

/// What Xen's toolstack should do when the guest powers off, reboots or crashes.
///
/// libxl only records this in the domain config; acting on it is the caller's
/// job (as `xl` does): the domain stays in the shutdown state until destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownAction {
    /// Destroy the domain.
    #[default]
    Destroy,
    /// Restart it.
    Restart,
    /// Leave it in place, shut down, for inspection.
    Preserve,
}

/// One virtual block device: a dom0 block device or file handed to blkback,
/// raw format, `phy` backend (no QEMU, no tap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The dom0 path, e.g. `/dev/loop0`.
    pub target: PathBuf,
    /// The guest device name, e.g. `xvda`.
    pub vdev: String,
    /// Read-only for the guest.
    pub readonly: bool,
    /// The hotplug script libxl runs for it (`None`: Xen's stock `block` script).
    pub script: Option<PathBuf>,
}

impl Disk {
    /// A disk at `target` seen by the guest as `vdev`, read-write.
    pub fn new(target: impl Into<PathBuf>, vdev: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            vdev: vdev.into(),
            readonly: false,
            script: None,
        }
    }

    /// The same disk with its own hotplug script (an absolute path).
    pub fn script(mut self, script: impl Into<PathBuf>) -> Self {
        self.script = Some(script.into());
        self
    }

    /// The same disk, read-only.
    pub fn readonly(mut self) -> Self {
        self.readonly = true;
        self
    }
}

/// One virtual network interface: a netfront in the guest, a vif in dom0 (no QEMU, no
/// emulated NIC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The dom0 bridge the hotplug step joins the vif to (`None`: the script decides).
    pub bridge: Option<String>,
    /// The vif's name in dom0 (`None`: Xen's `vif<domid>.<devid>`).
    pub ifname: Option<String>,
    /// The guest's IPv4 address, for the hotplug step (informational to Xen).
    pub ip: Option<String>,
    /// The hotplug script libxl runs for it (`None`: Xen's stock `vif-bridge`).
    pub script: Option<PathBuf>,
}

impl Nic {
    /// A NIC with the MAC `mac`, on Xen's defaults otherwise.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            bridge: None,
            ifname: None,
            ip: None,
            script: None,
        }
    }

    /// MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A validated domain configuration. Build one with [`DomainConfig::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    pub(crate) name: String,
    pub(crate) domain_type: DomainType,
    pub(crate) uuid: Option<[u8; 16]>,
    pub(crate) kernel: PathBuf,
    pub(crate) ramdisk: Option<PathBuf>,
    pub(crate) cmdline: Option<String>,
    pub(crate) memory_mib: u64,
    pub(crate) max_memory_mib: u64,
    pub(crate) vcpus: u32,
    pub(crate) disks: Vec<Disk>,
    pub(crate) nics: Vec<Nic>,
    pub(crate) on_poweroff: ShutdownAction,
    pub(crate) on_reboot: ShutdownAction,
    pub(crate) on_crash: ShutdownAction,
    pub(crate) run_hotplug_scripts: Option<bool>,
}

impl DomainConfig {
    /// Starts a configuration for a domain called `name` (PVH, 1 vCPU, no
    /// memory or kernel yet: both must be set).
    pub fn builder(name: impl Into<String>) -> DomainConfigBuilder {
        DomainConfigBuilder {
            config: DomainConfig {
                name: name.into(),
                domain_type: DomainType::default(),
                uuid: None,
                kernel: PathBuf::new(),
                ramdisk: None,
                cmdline: None,
                memory_mib: 0,
                max_memory_mib: 0,
                vcpus: 1,
                disks: Vec::new(),
                nics: Vec::new(),
                on_poweroff: ShutdownAction::Destroy,
                on_reboot: ShutdownAction::Destroy,
                on_crash: ShutdownAction::Destroy,
                run_hotplug_scripts: None,
            },
        }
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PV or PVH.
    pub fn domain_type(&self) -> DomainType {
        self.domain_type
    }

    /// The fixed UUID, if one was given (otherwise one is generated at create).
    pub fn uuid(&self) -> Option<[u8; 16]> {
        self.uuid
    }

    /// The dom0 path of the guest kernel.
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// The dom0 path of the initramfs, if any.
    pub fn ramdisk(&self) -> Option<&Path> {
        self.ramdisk.as_deref()
    }

    /// The kernel command line, if any.
    pub fn cmdline(&self) -> Option<&str> {
        self.cmdline.as_deref()
    }

    /// Initial memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory_mib
    }

    /// Maximum memory in MiB (at least [`Self::memory_mib`]).
    pub fn max_memory_mib(&self) -> u64 {
        self.max_memory_mib
    }

    /// Number of vCPUs, all online at boot.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    /// The disks, in order.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// The network interfaces, in order (devid 0, 1, ...).
    pub fn nics(&self) -> &[Nic] {
        &self.nics
    }

    /// Action on guest power-off.
    pub fn on_poweroff(&self) -> ShutdownAction {
        self.on_poweroff
    }

    /// Action on guest reboot.
    pub fn on_reboot(&self) -> ShutdownAction {
        self.on_reboot
    }

    /// Action on guest crash.
    pub fn on_crash(&self) -> ShutdownAction {
        self.on_crash
    }

    /// Whether libxl runs the hotplug scripts itself (`None`: libxl's default, yes).
    pub fn run_hotplug_scripts(&self) -> Option<bool> {
        self.run_hotplug_scripts
    }
}

/// Collects the settings of a [`DomainConfig`]; see [`DomainConfig::builder`].
///
/// The console needs no setting: every PV and PVH domain gets console 0, served
/// by xenconsoled (no QEMU); [`crate::Context::console_tty`] finds its pty.
#[derive(Debug, Clone)]
#[must_use]
pub struct DomainConfigBuilder {
    config: DomainConfig,
}

impl DomainConfigBuilder {
    /// PV or PVH (default PVH).
    pub fn domain_type(mut self, domain_type: DomainType) -> Self {
        self.config.domain_type = domain_type;
        self
    }

    /// A fixed UUID (default: a random one generated when the domain is created).
    pub fn uuid(mut self, uuid: [u8; 16]) -> Self {
        self.config.uuid = Some(uuid);
        self
    }

    /// The dom0 path of the guest kernel (required).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.kernel = path.into();
        self
    }

    /// The dom0 path of the initramfs.
    pub fn ramdisk(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.ramdisk = Some(path.into());
        self
    }

    /// The kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.config.cmdline = Some(cmdline.into());
        self
    }

    /// Initial memory in MiB (required).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.config.memory_mib = mib;
        self
    }

    /// Maximum memory in MiB (default: the initial memory).
    pub fn max_memory_mib(mut self, mib: u64) -> Self {
        self.config.max_memory_mib = mib;
        self
    }

    /// Number of vCPUs (default 1).
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.config.vcpus = vcpus;
        self
    }

    /// Adds a disk.
    pub fn disk(mut self, disk: Disk) -> Self {
        self.config.disks.push(disk);
        self
    }

    /// Adds a network interface.
    pub fn nic(mut self, nic: Nic) -> Self {
        self.config.nics.push(nic);
        self
    }

    /// Action on guest power-off (default destroy).
    pub fn on_poweroff(mut self, action: ShutdownAction) -> Self {
        self.config.on_poweroff = action;
        self
    }

    /// Action on guest reboot (default destroy: a container does not reboot).
    pub fn on_reboot(mut self, action: ShutdownAction) -> Self {
        self.config.on_reboot = action;
        self
    }

    /// Action on guest crash (default destroy).
    pub fn on_crash(mut self, action: ShutdownAction) -> Self {
        self.config.on_crash = action;
        self
    }

    /// Whether libxl forks the hotplug scripts (`/etc/xen/scripts/block`) itself
    /// (`c_info.run_hotplug_scripts`; libxl's default is yes). With `false`,
    /// something else (udev rules) must run them.
    pub fn run_hotplug_scripts(mut self, run: bool) -> Self {
        self.config.run_hotplug_scripts = Some(run);
        self
    }

    /// Checks the settings and returns the configuration.
    pub fn build(self) -> Result<DomainConfig, ConfigError> {
        let mut c = self.config;
        validate_name(&c.name)?;
        if c.kernel.as_os_str().is_empty() {
            return Err(ConfigError::EmptyKernel);
        }
        no_nul("kernel path", c.kernel.as_os_str().as_bytes())?;
        if let Some(r) = &c.ramdisk {
            no_nul("ramdisk path", r.as_os_str().as_bytes())?;
        }
        if let Some(cmd) = &c.cmdline {
            no_nul("cmdline", cmd.as_bytes())?;
        }
        if c.memory_mib == 0 {
            return Err(ConfigError::ZeroMemory);
        }
        if c.max_memory_mib == 0 {
            c.max_memory_mib = c.memory_mib;
        }
        if c.max_memory_mib < c.memory_mib {
            return Err(ConfigError::MaxMemoryBelowMemory {
                mib: c.memory_mib,
                max_mib: c.max_memory_mib,
            });
        }
        // libxl's LIBXL_MEMKB_DEFAULT is u64::MAX: stay well below it.
        if c.max_memory_mib.checked_mul(1024 * 2).is_none() {
            return Err(ConfigError::MemoryTooLarge(c.max_memory_mib));
        }
        if c.vcpus == 0 {
            return Err(ConfigError::ZeroVcpus);
        }
        if c.vcpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus(c.vcpus));
        }
        let mut seen = HashSet::new();
        for d in &c.disks {
            validate_vdev(&d.vdev)?;
            if d.target.as_os_str().is_empty() {
                return Err(ConfigError::EmptyDiskTarget(d.vdev.clone()));
            }
            no_nul("disk target", d.target.as_os_str().as_bytes())?;
            if !seen.insert(d.vdev.as_str()) {
                return Err(ConfigError::DuplicateVdev(d.vdev.clone()));
            }
        }
        for n in &c.nics {
            if n.mac[0] & 1 == 1 {
                return Err(ConfigError::MulticastMac(n.mac_string()));
            }
            for name in n.bridge.iter().chain(n.ifname.iter()) {
                let ok = !name.is_empty()
                    && name.len() < 16
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !ok {
                    return Err(ConfigError::InvalidIfname(name.clone()));
                }
            }
            if let Some(ip) = &n.ip {
                no_nul("nic ip", ip.as_bytes())?;
            }
            if let Some(script) = &n.script {
                no_nul("nic script", script.as_os_str().as_bytes())?;
            }
        }
        Ok(c)
    }
}

fn no_nul(what: &'static str, bytes: &[u8]) -> Result<(), ConfigError> {
    if bytes.contains(&0) {
        Err(ConfigError::NulByte(what))
    } else {
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::EmptyName);
    }
    if name.contains(|c: char| c.is_control() || c == '/') {
        return Err(ConfigError::InvalidName(name.to_owned()));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::NumericName(name.to_owned()));
    }
    Ok(())
}

/// Accepts the vdev forms hyperxl uses: lowercase letters then optional
/// digits (`xvda`, `xvdb1`, `sda`).
fn validate_vdev(vdev: &str) -> Result<(), ConfigError> {
    let letters = vdev.bytes().take_while(u8::is_ascii_lowercase).count();
    let rest_digits = vdev.bytes().skip(letters).all(|b| b.is_ascii_digit());
    if letters == 0 || !rest_digits {
        return Err(ConfigError::InvalidVdev(vdev.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> DomainConfigBuilder {
        DomainConfig::builder("web")
            .kernel("/boot/vmlinuz")
            .memory_mib(128)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = base().build().unwrap();
        assert_eq!(c.domain_type(), DomainType::Pvh);
        assert_eq!(c.vcpus(), 1);
        assert_eq!(c.max_memory_mib(), 128);
        assert_eq!(c.on_reboot(), ShutdownAction::Destroy);
        assert_eq!(c.run_hotplug_scripts(), None);
    }

    #[test]
    fn zero_memory_refused() {
        assert_eq!(
            base().memory_mib(0).build().unwrap_err(),
            ConfigError::ZeroMemory
        );
    }

    #[test]
    fn huge_memory_refused() {
        assert_eq!(
            base().memory_mib(u64::MAX / 1024).build().unwrap_err(),
            ConfigError::MemoryTooLarge(u64::MAX / 1024)
        );
    }

    #[test]
    fn max_memory_below_memory_refused() {
        assert_eq!(
            base().max_memory_mib(64).build().unwrap_err(),
            ConfigError::MaxMemoryBelowMemory {
                mib: 128,
                max_mib: 64
            }
        );
        assert_eq!(
            base().max_memory_mib(256).build().unwrap().max_memory_mib(),
            256
        );
    }

    #[test]
    fn empty_kernel_refused() {
        let e = DomainConfig::builder("web").memory_mib(128).build();
        assert_eq!(e.unwrap_err(), ConfigError::EmptyKernel);
        assert_eq!(
            base().kernel("").build().unwrap_err(),
            ConfigError::EmptyKernel
        );
    }

    #[test]
    fn names_checked() {
        let named = |n: &str| {
            DomainConfig::builder(n)
                .kernel("/k")
                .memory_mib(1)
                .build()
                .map(|_| ())
        };
        assert_eq!(named(""), Err(ConfigError::EmptyName));
        assert_eq!(named("a/b"), Err(ConfigError::InvalidName("a/b".into())));
        assert_eq!(named("a\nb"), Err(ConfigError::InvalidName("a\nb".into())));
        assert_eq!(named("42"), Err(ConfigError::NumericName("42".into())));
        assert_eq!(named("web-42"), Ok(()));
    }

    #[test]
    fn nul_bytes_refused() {
        assert_eq!(
            base().cmdline("a\0b").build().unwrap_err(),
            ConfigError::NulByte("cmdline")
        );
        assert_eq!(
            base().ramdisk("/x\0").build().unwrap_err(),
            ConfigError::NulByte("ramdisk path")
        );
    }

    #[test]
    fn vcpus_checked() {
        assert_eq!(base().vcpus(0).build().unwrap_err(), ConfigError::ZeroVcpus);
        assert_eq!(
            base().vcpus(MAX_VCPUS + 1).build().unwrap_err(),
            ConfigError::TooManyVcpus(MAX_VCPUS + 1)
        );
        assert_eq!(base().vcpus(MAX_VCPUS).build().unwrap().vcpus(), MAX_VCPUS);
    }

    #[test]
    fn duplicate_vdev_refused() {
        let e = base()
            .disk(Disk::new("/dev/loop0", "xvda").readonly())
            .disk(Disk::new("/dev/loop1", "xvda"))
            .build();
        assert_eq!(e.unwrap_err(), ConfigError::DuplicateVdev("xvda".into()));
    }

    #[test]
    fn nics_are_checked() {
        let base = || DomainConfig::builder("d").kernel("/k").memory_mib(64);
        let mut nic = Nic::new([0x02, 0x48, 10, 88, 0, 5]);
        nic.bridge = Some("hyperxl0".into());
        nic.ifname = Some("hx0123456789ab".into());
        let ok = base().nic(nic.clone()).build().unwrap();
        assert_eq!(ok.nics()[0].mac_string(), "02:48:0a:58:00:05");
        let mut bad = nic.clone();
        bad.mac[0] = 0x01;
        assert!(matches!(
            base().nic(bad).build(),
            Err(ConfigError::MulticastMac(_))
        ));
        let mut bad = nic.clone();
        bad.ifname = Some("sixteen-chars-xx".into());
        assert!(matches!(
            base().nic(bad).build(),
            Err(ConfigError::InvalidIfname(_))
        ));
        let mut bad = nic;
        bad.bridge = Some("br 0".into());
        assert!(matches!(
            base().nic(bad).build(),
            Err(ConfigError::InvalidIfname(_))
        ));
    }

    #[test]
    fn bad_disks_refused() {
        for bad in ["", "XVDA", "1xvd", "xvd a", "xvda1b"] {
            assert_eq!(
                base()
                    .disk(Disk::new("/dev/loop0", bad))
                    .build()
                    .unwrap_err(),
                ConfigError::InvalidVdev(bad.into()),
                "{bad:?}"
            );
        }
        assert_eq!(
            base().disk(Disk::new("", "xvda")).build().unwrap_err(),
            ConfigError::EmptyDiskTarget("xvda".into())
        );
        let ok = base()
            .disk(Disk::new("/dev/loop0", "xvda").readonly())
            .disk(Disk::new("/var/lib/x.img", "xvdb1"))
            .build()
            .unwrap();
        assert!(ok.disks()[0].readonly);
        assert!(!ok.disks()[1].readonly);
    }
}
