//! Golden tests of libxl's JSON for hyperxl's PV and PVH domain configs.
//!
//! They need libxenlight but not Xen: `libxl_domain_config_to_json` runs without
//! a hypervisor. Run with `UPDATE_GOLDEN=1` to rewrite `tests/golden/*.json`
//! after an intended change, and review the diff.

use std::path::PathBuf;

use libxl::{domain_config_to_json, Disk, DomainConfig, DomainType, ShutdownAction};

fn config(domain_type: DomainType) -> DomainConfig {
    DomainConfig::builder("hyperxl-golden")
        .domain_type(domain_type)
        .uuid(*b"hyperxl-golden-1")
        .kernel("/var/lib/hyperxl/kernel/bzImage")
        .ramdisk("/var/lib/hyperxl/kernel/initramfs.cpio.gz")
        .cmdline("console=hvc0 quiet")
        .memory_mib(128)
        .vcpus(1)
        .disk(
            Disk::new("/dev/loop0", "xvda")
                .readonly()
                .script("/usr/local/bin/hyperxl-block"),
        )
        .disk(Disk::new("/var/lib/hyperxl/vms/golden/data.img", "xvdb"))
        .build()
        .expect("valid config")
}

fn check_golden(name: &str, json: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let actual = format!("{}\n", json.trim_end());
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from libxl's output (UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

fn json_of(domain_type: DomainType) -> (String, serde_json::Value) {
    let json = domain_config_to_json(&config(domain_type)).expect("to_json");
    let value = serde_json::from_str(&json).expect("libxl emits valid JSON");
    (json, value)
}

#[test]
fn pvh_golden() {
    let (json, _) = json_of(DomainType::Pvh);
    check_golden("pvh", &json);
}

#[test]
fn pv_golden() {
    let (json, _) = json_of(DomainType::Pv);
    check_golden("pv", &json);
}

/// Independent of the golden files: the facts the fast path relies on.
#[test]
fn configs_need_no_qemu() {
    for (t, type_name) in [(DomainType::Pvh, "pvh"), (DomainType::Pv, "pv")] {
        let (_, v) = json_of(t);
        assert_eq!(v["c_info"]["type"], type_name);
        assert_eq!(v["c_info"]["name"], "hyperxl-golden");
        let b = &v["b_info"];
        assert_eq!(b["kernel"], "/var/lib/hyperxl/kernel/bzImage");
        assert_eq!(b["cmdline"], "console=hvc0 quiet");
        assert_eq!(b["target_memkb"], 128 * 1024);
        assert_eq!(b["max_memkb"], 128 * 1024);
        assert_eq!(b["max_vcpus"], 1);
        assert!(b.get("device_model_version").is_none(), "{b}");
        let disks = v["disks"].as_array().expect("disks");
        assert_eq!(disks.len(), 2);
        for d in disks {
            assert_eq!(d["backend"], "phy");
            assert_eq!(d["format"], "raw");
        }
        assert_eq!(disks[0]["vdev"], "xvda");
        assert_eq!(disks[0]["pdev_path"], "/dev/loop0");
        assert!(disks[0].get("readwrite").is_none(), "xvda is read-only");
        assert_eq!(disks[1]["readwrite"], 1);
        for absent in ["vfbs", "vkbs", "channels", "p9s", "nics"] {
            assert!(v.get(absent).is_none(), "{absent} present: {v}");
        }
        // Destroy is libxl's default action, which its JSON leaves out.
        for action in ["on_poweroff", "on_reboot", "on_crash"] {
            assert!(v.get(action).is_none(), "{action}: {v}");
        }
    }
}

#[test]
fn non_default_actions_and_vcpus_reach_libxl() {
    let config = DomainConfig::builder("actions")
        .kernel("/k")
        .memory_mib(64)
        .max_memory_mib(256)
        .vcpus(3)
        .on_reboot(ShutdownAction::Restart)
        .on_crash(ShutdownAction::Preserve)
        .run_hotplug_scripts(false)
        .build()
        .expect("valid config");
    let v: serde_json::Value =
        serde_json::from_str(&domain_config_to_json(&config).expect("to_json")).expect("JSON");
    assert_eq!(v["on_reboot"], "restart");
    assert_eq!(v["on_crash"], "preserve");
    assert!(v.get("on_poweroff").is_none());
    assert_eq!(v["c_info"]["run_hotplug_scripts"], "False");
    assert!(v["c_info"].get("uuid").is_none(), "no UUID until create");
    assert_eq!(v["b_info"]["avail_vcpus"], serde_json::json!([0, 1, 2]));
    assert_eq!(v["b_info"]["max_vcpus"], 3);
    assert_eq!(v["b_info"]["target_memkb"], 64 * 1024);
    assert_eq!(v["b_info"]["max_memkb"], 256 * 1024);
    assert!(v.get("disks").is_none());
}
