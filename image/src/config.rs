//! Parsing image configs leniently where real images differ from `oci-spec`'s types.

use oci_spec::image::ImageConfiguration;

/// Parses an image config. `history` is optional in the OCI spec (and absent from many
/// configs) but required by `oci-spec`'s type: a missing or null one becomes empty.
pub fn parse(bytes: &[u8]) -> Result<ImageConfiguration, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
    if let Some(obj) = v.as_object_mut() {
        match obj.get("history") {
            None | Some(serde_json::Value::Null) => {
                obj.insert("history".into(), serde_json::Value::Array(Vec::new()));
            }
            _ => {}
        }
    }
    serde_json::from_value(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn history_is_optional() {
        let c = super::parse(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert!(c.history().is_empty());
        assert!(super::parse(br#"{"os":"linux"}"#).is_err());
    }
}
