//! The spec JSON as the guest's init reads it from xenstore: `Spec::from_json` (parse
//! and validate), the user lookup init does next (against a fixed /etc/passwd and
//! /etc/group), and a re-serialisation that must be accepted again.
#![no_main]

use hyperxl_contract::{user, Spec};
use libfuzzer_sys::fuzz_target;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:nobody\nwheel:x:10:app,root\n";

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = Spec::from_json(data) {
        let _ = user::resolve(&spec.user, PASSWD, GROUP);
        let json = spec.to_json().expect("a validated spec serialises");
        let again = Spec::from_json(json.as_bytes()).expect("a serialised spec parses again");
        assert_eq!(again, spec, "the spec changed in a round trip");
    }
});
