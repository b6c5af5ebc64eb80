//! Registry and archive JSON: every input goes through each reader `pull` and `load`
//! use (registry manifest or index, OCI layout index, docker-save manifest.json, image
//! config), so one corpus serves them all.
#![no_main]

use hyperxl_image::fuzzing;
use libfuzzer_sys::fuzz_target;

/// Content-Types a registry may send with a manifest.
const MEDIA: [&str; 3] = [
    "",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fuzz_target!(|data: &[u8]| {
    for media in MEDIA {
        let _ = fuzzing::registry_manifest(data, media);
    }
    let _ = fuzzing::layout_index(data);
    let _ = fuzzing::docker_save_manifest(data);
    let _ = fuzzing::image_config(data);
});
