//! [`RawDomainConfig`]: a `libxl_domain_config` filled from a [`DomainConfig`],
//! owned and disposed by Rust.

use std::ffi::{c_char, CStr};
use std::os::unix::ffi::OsStrExt;
use std::ptr;

use libxl_sys as sys;

use crate::config::{Disk, DomainConfig, DomainType, Nic, ShutdownAction};
use crate::error::LibxlError;

/// An owned `libxl_domain_config`, freed by `libxl_domain_config_dispose` on drop.
///
/// Every string and array inside it is allocated with the C allocator, as libxl's
/// dispose functions free them with `free()`.
pub struct RawDomainConfig {
    // Boxed so the address handed to libxl stays put if the wrapper moves.
    inner: Box<sys::libxl_domain_config>,
}

impl std::fmt::Debug for RawDomainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDomainConfig").finish_non_exhaustive()
    }
}

impl RawDomainConfig {
    /// Builds libxl's structure from a validated configuration.
    ///
    /// PV and PVH both take the kernel, ramdisk and cmdline in the top-level
    /// `b_info` fields (Xen 4.17 deprecates `b_info.u.pv.kernel` and friends).
    /// Disks use the `phy` backend in raw format, so libxl starts no QEMU; no
    /// vfb, vkb, channel or p9 devices are added, and console 0 is the PV
    /// console that xenconsoled serves.
    pub fn new(config: &DomainConfig) -> Result<Self, LibxlError> {
        let mut raw = Self::empty();
        raw.fill(config)?;
        Ok(raw)
    }

    fn empty() -> Self {
        let mut inner = Box::<sys::libxl_domain_config>::default();
        // SAFETY: inner points to writable memory for one libxl_domain_config;
        // init only writes default values into it.
        unsafe { sys::libxl_domain_config_init(&mut *inner) };
        Self { inner }
    }

    fn fill(&mut self, config: &DomainConfig) -> Result<(), LibxlError> {
        let d = &mut *self.inner;
        let domain_type = match config.domain_type {
            DomainType::Pvh => sys::LIBXL_DOMAIN_TYPE_PVH,
            DomainType::Pv => sys::LIBXL_DOMAIN_TYPE_PV,
        };

        d.c_info.type_ = domain_type;
        d.c_info.name = c_string(config.name.as_bytes())?;
        if let Some(uuid) = config.uuid {
            d.c_info.uuid.uuid = uuid;
        }
        if let Some(run) = config.run_hotplug_scripts {
            // SAFETY: the defbool is a field of our initialised config.
            unsafe { sys::libxl_defbool_set(&mut d.c_info.run_hotplug_scripts, run) };
        }

        // SAFETY: b_info was initialised by libxl_domain_config_init and its
        // union has not been touched yet, as init_type requires.
        unsafe { sys::libxl_domain_build_info_init_type(&mut d.b_info, domain_type) };
        let b = &mut d.b_info;
        b.kernel = c_string(config.kernel.as_os_str().as_bytes())?;
        if let Some(r) = &config.ramdisk {
            b.ramdisk = c_string(r.as_os_str().as_bytes())?;
        }
        if let Some(c) = &config.cmdline {
            b.cmdline = c_string(c.as_bytes())?;
        }
        // Validation bounds these products well below u64::MAX.
        b.target_memkb = config.memory_mib * 1024;
        b.max_memkb = config.max_memory_mib * 1024;
        b.max_vcpus = i32::try_from(config.vcpus)
            .map_err(|_| crate::config::ConfigError::TooManyVcpus(config.vcpus))?;
        b.avail_vcpus = all_set_bitmap(config.vcpus)?;

        let n = config.disks.len();
        if n > 0 {
            let disks = device_array(n, sys::libxl_device_disk_init)?;
            d.disks = disks;
            d.num_disks = c_int_len(n)?;
            for (i, disk) in config.disks.iter().enumerate() {
                // SAFETY: i < n and every element was initialised above; no
                // other reference to the array exists while this one lives.
                fill_disk(unsafe { &mut *disks.add(i) }, disk)?;
            }
        }

        let n = config.nics.len();
        if n > 0 {
            let nics = device_array(n, sys::libxl_device_nic_init)?;
            d.nics = nics;
            d.num_nics = c_int_len(n)?;
            for (i, nic) in config.nics.iter().enumerate() {
                // SAFETY: i < n and every element was initialised above; no other
                // reference to the array exists while this one lives.
                fill_nic(unsafe { &mut *nics.add(i) }, nic, c_int_len(i)?)?;
            }
        }

        d.on_poweroff = action(config.on_poweroff);
        d.on_reboot = action(config.on_reboot);
        d.on_crash = action(config.on_crash);
        Ok(())
    }

    /// Gives the domain a random UUID if it has none (libxl does not make one).
    pub(crate) fn ensure_uuid(&mut self) {
        let uuid = &mut self.inner.c_info.uuid;
        // SAFETY: uuid is a valid, initialised libxl_uuid owned by self.
        if unsafe { sys::libxl_uuid_is_nil(uuid) } != 0 {
            // SAFETY: as above; generate writes 16 random bytes into it.
            unsafe { sys::libxl_uuid_generate(uuid) };
        }
    }

    /// The raw pointer for libxl calls; valid while `self` lives.
    pub fn as_mut_ptr(&mut self) -> *mut sys::libxl_domain_config {
        &mut *self.inner
    }

    /// libxl's JSON form of this configuration (`libxl_domain_config_to_json`),
    /// as `xl create -n` would print it before defaults are filled in.
    ///
    /// Works without Xen: the JSON generator uses the libxl context only to log
    /// a failure of the JSON library itself, so a NULL context is passed.
    pub fn to_json(&mut self) -> Result<String, LibxlError> {
        // SAFETY: inner is a valid, initialised config. libxl_domain_config_to_json
        // dereferences ctx only to log a yajl failure, which cannot happen for a
        // well-formed config (no UTF-8 validation or float values are involved;
        // only an out-of-memory strdup could reach it).
        let p = unsafe { sys::libxl_domain_config_to_json(ptr::null_mut(), &mut *self.inner) };
        if p.is_null() {
            return Err(LibxlError::null("libxl_domain_config_to_json"));
        }
        // SAFETY: p is a non-NULL, NUL-terminated string malloc'd by libxl.
        let json = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        // SAFETY: p came from malloc (strdup) and is not used again.
        unsafe { libc::free(p.cast()) };
        Ok(json)
    }
}

impl Drop for RawDomainConfig {
    fn drop(&mut self) {
        // SAFETY: inner was initialised by libxl_domain_config_init and every
        // pointer in it is NULL or owned C memory that dispose frees exactly once.
        unsafe { sys::libxl_domain_config_dispose(&mut *self.inner) };
    }
}

/// The libxl JSON of a domain configuration, without needing Xen.
pub fn domain_config_to_json(config: &DomainConfig) -> Result<String, LibxlError> {
    RawDomainConfig::new(config)?.to_json()
}

/// Fills an initialised `libxl_device_disk`: a `phy` disk in raw format on dom0's
/// backend, so libxl starts no QEMU for it.
pub(crate) fn fill_disk(raw: &mut sys::libxl_device_disk, disk: &Disk) -> Result<(), LibxlError> {
    raw.backend_domid = 0;
    raw.pdev_path = c_string(disk.target.as_os_str().as_bytes())?;
    raw.vdev = c_string(disk.vdev.as_bytes())?;
    raw.backend = sys::LIBXL_DISK_BACKEND_PHY;
    raw.format = sys::LIBXL_DISK_FORMAT_RAW;
    raw.readwrite = i32::from(!disk.readonly);
    raw.is_cdrom = 0;
    raw.removable = 0;
    if let Some(script) = &disk.script {
        raw.script = c_string(script.as_os_str().as_bytes())?;
    }
    Ok(())
}

/// Fills an initialised `libxl_device_nic` as device `devid`.
pub(crate) fn fill_nic(
    raw: &mut sys::libxl_device_nic,
    nic: &Nic,
    devid: i32,
) -> Result<(), LibxlError> {
    raw.backend_domid = 0;
    raw.devid = devid;
    raw.mac = nic.mac;
    // A PV/PVH guest has no device model: the vif is its only NIC.
    raw.nictype = sys::LIBXL_NIC_TYPE_VIF;
    if let Some(bridge) = &nic.bridge {
        raw.bridge = c_string(bridge.as_bytes())?;
    }
    if let Some(ifname) = &nic.ifname {
        raw.ifname = c_string(ifname.as_bytes())?;
    }
    if let Some(ip) = &nic.ip {
        raw.ip = c_string(ip.as_bytes())?;
    }
    if let Some(script) = &nic.script {
        raw.script = c_string(script.as_os_str().as_bytes())?;
    }
    Ok(())
}

fn action(a: ShutdownAction) -> sys::libxl_action_on_shutdown {
    match a {
        ShutdownAction::Destroy => sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY,
        ShutdownAction::Restart => sys::LIBXL_ACTION_ON_SHUTDOWN_RESTART,
        ShutdownAction::Preserve => sys::LIBXL_ACTION_ON_SHUTDOWN_PRESERVE,
    }
}

/// A calloc'd array of `n` libxl device structs, each passed through libxl's `init`;
/// `libxl_domain_config_dispose` frees it with free().
fn device_array<T>(n: usize, init: unsafe extern "C" fn(*mut T)) -> Result<*mut T, LibxlError> {
    // SAFETY: calloc either fails (NULL, handled) or returns zeroed memory for n Ts.
    let array = unsafe { libc::calloc(n, std::mem::size_of::<T>()) }.cast::<T>();
    if array.is_null() {
        return Err(LibxlError::OutOfMemory);
    }
    for i in 0..n {
        // SAFETY: i < n, so the pointer is inside the calloc'd array; init is libxl's
        // initialiser for exactly this struct type.
        unsafe { init(array.add(i)) };
    }
    Ok(array)
}

fn c_int_len(n: usize) -> Result<i32, LibxlError> {
    i32::try_from(n).map_err(|_| LibxlError::OutOfMemory)
}

/// A malloc'd copy of `bytes` (which must hold no NUL; validation checks that).
fn c_string(bytes: &[u8]) -> Result<*mut c_char, LibxlError> {
    debug_assert!(!bytes.contains(&0));
    // SAFETY: malloc either fails (NULL, handled) or returns len+1 writable bytes.
    let p = unsafe { libc::malloc(bytes.len() + 1) }.cast::<u8>();
    if p.is_null() {
        return Err(LibxlError::OutOfMemory);
    }
    // SAFETY: p has room for bytes.len() + 1 bytes and does not overlap `bytes`.
    unsafe {
        ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
    }
    Ok(p.cast())
}

/// A libxl_bitmap of `bits` bits, all set, allocated with calloc (freed by
/// `libxl_bitmap_dispose`). libxl_bitmap_alloc would need a live context.
fn all_set_bitmap(bits: u32) -> Result<sys::libxl_bitmap, LibxlError> {
    let bytes = bits.div_ceil(8);
    // SAFETY: calloc either fails (NULL, handled) or returns `bytes` zeroed bytes.
    let map = unsafe { libc::calloc(bytes as usize, 1) }.cast::<u8>();
    if map.is_null() {
        return Err(LibxlError::OutOfMemory);
    }
    for bit in 0..bits {
        // SAFETY: bit / 8 < bytes, so the write stays inside the allocation.
        unsafe { *map.add((bit / 8) as usize) |= 1 << (bit % 8) };
    }
    Ok(sys::libxl_bitmap { size: bytes, map })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Disk;

    fn config() -> DomainConfig {
        DomainConfig::builder("t")
            .kernel("/k")
            .ramdisk("/r")
            .cmdline("console=hvc0")
            .memory_mib(64)
            .vcpus(9)
            .disk(Disk::new("/dev/loop0", "xvda").readonly())
            .disk(Disk::new("/dev/loop1", "xvdb"))
            .build()
            .unwrap()
    }

    #[test]
    fn fields_land_where_libxl_reads_them() {
        let mut raw = RawDomainConfig::new(&config()).unwrap();
        // SAFETY: the pointer is valid while raw lives; we only read.
        let d = unsafe { &*raw.as_mut_ptr() };
        assert_eq!(d.c_info.type_, sys::LIBXL_DOMAIN_TYPE_PVH);
        assert_eq!(d.b_info.type_, sys::LIBXL_DOMAIN_TYPE_PVH);
        // SAFETY: kernel was set from a C string we allocated.
        assert_eq!(unsafe { CStr::from_ptr(d.b_info.kernel) }.to_bytes(), b"/k");
        assert_eq!(d.b_info.target_memkb, 64 * 1024);
        assert_eq!(d.b_info.max_memkb, 64 * 1024);
        assert_eq!(d.b_info.max_vcpus, 9);
        assert_eq!(d.b_info.avail_vcpus.size, 2);
        // SAFETY: the map holds avail_vcpus.size bytes.
        let map = unsafe { std::slice::from_raw_parts(d.b_info.avail_vcpus.map, 2) };
        assert_eq!(map, &[0xff, 0x01]);
        assert_eq!(d.num_disks, 2);
        // SAFETY: disks holds num_disks initialised elements.
        let disks = unsafe { std::slice::from_raw_parts(d.disks, 2) };
        assert_eq!(disks[0].readwrite, 0);
        assert_eq!(disks[1].readwrite, 1);
        assert_eq!(disks[0].backend, sys::LIBXL_DISK_BACKEND_PHY);
        assert_eq!(d.on_reboot, sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY);
    }

    #[test]
    fn uuid_generated_only_when_missing() {
        let mut raw = RawDomainConfig::new(&config()).unwrap();
        raw.ensure_uuid();
        assert_ne!(raw.inner.c_info.uuid.uuid, [0; 16]);
        let fixed = DomainConfig::builder("t")
            .kernel("/k")
            .memory_mib(1)
            .uuid([7; 16])
            .build()
            .unwrap();
        let mut raw = RawDomainConfig::new(&fixed).unwrap();
        raw.ensure_uuid();
        assert_eq!(raw.inner.c_info.uuid.uuid, [7; 16]);
    }
}
