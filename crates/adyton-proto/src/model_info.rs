//! Model info in CNAP's schema (`design.md`, "Model info"), with Adyton's extension fields: what
//! the registry stores and serves, what publishers send it, and what the inference server reads
//! before a pull.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Model info in CNAP's schema, with Adyton's extension fields.
///
/// Serialised as the registry answers it: CNAP's fields are always present (`null` when unknown),
/// so that clients written for CNAP's model provider can index them; Adyton's extension fields
/// only when set. Deserialising ignores unknown fields (a newer registry may add some); the
/// registry's own input goes through [`ModelInfo::from_json_strict`], which refuses them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's id; in a request, absent or equal to the id in the path.
    #[serde(default)]
    pub id: String,
    /// The model's framework, e.g. `onnx`.
    #[serde(default)]
    pub framework: Option<String>,
    /// The hardware it targets, e.g. `cpu`.
    #[serde(default)]
    pub target: Option<String>,
    /// The blob's full download URL; the registry's own `{public_url}/blobs/{id}` when a request
    /// leaves it out.
    #[serde(default)]
    pub url: Option<String>,
    /// A display name.
    #[serde(default)]
    pub name: Option<String>,
    /// The model's version (a number is accepted and kept as text).
    #[serde(default, deserialize_with = "text_or_number")]
    pub version: Option<String>,
    /// The data type of its tensors, e.g. `float32`.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Whether the blob is encrypted.
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// The key broker's kind or name, as CNAP records it.
    #[serde(default)]
    pub kbs: Option<String>,
    /// The full URL of the key transfer: `{kbs}/kbs/v1/keys/{key_id}/transfer`.
    #[serde(default)]
    pub kbs_url: Option<String>,
    /// The key broker's id of the model key.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Adyton: the envelope format of the blob, `v1` or `v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Adyton: the blob's length in bytes (set by the registry for its own blobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_size: Option<u64>,
    /// Adyton: the blob's SHA-256, hex (set by the registry for its own blobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_sha256: Option<String>,
}

impl ModelInfo {
    /// Every field's name, in order.
    pub const FIELDS: &'static [&'static str] = &[
        "id",
        "framework",
        "target",
        "url",
        "name",
        "version",
        "dtype",
        "encrypted",
        "kbs",
        "kbs_url",
        "key_id",
        "format",
        "blob_size",
        "blob_sha256",
    ];

    /// Reads model info, refusing unknown fields, so that a misspelt field is an error rather
    /// than silently lost (the registry's input), and a field given twice.
    pub fn from_json_strict(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)?;
        if let Some(unknown) = map.keys().find(|key| !Self::FIELDS.contains(&key.as_str())) {
            return Err(serde::de::Error::unknown_field(unknown, Self::FIELDS));
        }
        // From the bytes, not the map, which keeps the last of a field given twice: the derived
        // reader refuses duplicates, as the lenient reader does.
        serde_json::from_slice(bytes)
    }

    /// The info as a publisher sends it: only the fields that are set.
    pub fn to_request_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and booleans always serialises.
        serde_json::to_vec(&SetFields(self)).unwrap_or_default()
    }
}

/// Model info with its unset fields left out, in [`ModelInfo::FIELDS`]' order.
struct SetFields<'a>(&'a ModelInfo);

impl Serialize for SetFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn set<S: SerializeStruct, T: Serialize>(
            s: &mut S,
            name: &'static str,
            value: &Option<T>,
        ) -> Result<(), S::Error> {
            match value {
                Some(value) => s.serialize_field(name, value),
                None => s.skip_field(name),
            }
        }
        let info = self.0;
        let mut s = serializer.serialize_struct("ModelInfo", ModelInfo::FIELDS.len())?;
        s.serialize_field("id", &info.id)?;
        set(&mut s, "framework", &info.framework)?;
        set(&mut s, "target", &info.target)?;
        set(&mut s, "url", &info.url)?;
        set(&mut s, "name", &info.name)?;
        set(&mut s, "version", &info.version)?;
        set(&mut s, "dtype", &info.dtype)?;
        set(&mut s, "encrypted", &info.encrypted)?;
        set(&mut s, "kbs", &info.kbs)?;
        set(&mut s, "kbs_url", &info.kbs_url)?;
        set(&mut s, "key_id", &info.key_id)?;
        set(&mut s, "format", &info.format)?;
        set(&mut s, "blob_size", &info.blob_size)?;
        set(&mut s, "blob_sha256", &info.blob_sha256)?;
        s.end()
    }
}

/// The registry's answer to a blob upload: what it stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobSummary {
    /// The blob's id.
    pub id: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its full download URL.
    pub url: String,
}

fn text_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(
        Option::<TextOrNumber>::deserialize(deserializer)?.map(|v| match v {
            TextOrNumber::Text(text) => text,
            TextOrNumber::Number(number) => number.to_string(),
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            id: "resnet-50".into(),
            framework: Some("onnx".into()),
            url: Some("http://registry/blobs/resnet-50".into()),
            encrypted: Some(true),
            kbs_url: Some("http://kbs/kbs/v1/keys/k1/transfer".into()),
            key_id: Some("k1".into()),
            format: Some("v2".into()),
            ..ModelInfo::default()
        }
    }

    #[test]
    fn the_answer_keeps_cnap_nulls_and_leaves_unset_extensions_out() {
        let json = serde_json::to_string(&info()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"resnet-50","framework":"onnx","target":null,"url":"http://registry/blobs/resnet-50","name":null,"version":null,"dtype":null,"encrypted":true,"kbs":null,"kbs_url":"http://kbs/kbs/v1/keys/k1/transfer","key_id":"k1","format":"v2"}"#
        );
        assert_eq!(serde_json::from_str::<ModelInfo>(&json).unwrap(), info());
        assert_eq!(
            ModelInfo::from_json_strict(json.as_bytes()).unwrap(),
            info()
        );
    }

    #[test]
    fn a_request_carries_only_what_is_set() {
        let json = info().to_request_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"id":"resnet-50","framework":"onnx","url":"http://registry/blobs/resnet-50","encrypted":true,"kbs_url":"http://kbs/kbs/v1/keys/k1/transfer","key_id":"k1","format":"v2"}"#
        );
        assert_eq!(ModelInfo::from_json_strict(&json).unwrap(), info());
    }

    #[test]
    fn a_blob_summary_round_trips() {
        let json = r#"{"id":"m","size":3,"sha256":"ab","url":"http://r/blobs/m"}"#;
        let summary: BlobSummary = serde_json::from_str(json).unwrap();
        assert_eq!(summary.size, 3);
        assert_eq!(serde_json::to_string(&summary).unwrap(), json);
        assert!(serde_json::from_str::<BlobSummary>(r#"{"id":"m"}"#).is_err());
    }

    #[test]
    fn a_numeric_version_is_kept_as_text() {
        let info: ModelInfo = serde_json::from_str(r#"{"id": "m", "version": 3}"#).unwrap();
        assert_eq!(info.version.as_deref(), Some("3"));
        let info = ModelInfo::from_json_strict(br#"{"version": "1.2"}"#).unwrap();
        assert_eq!(info.version.as_deref(), Some("1.2"));
        assert!(ModelInfo::from_json_strict(br#"{"version": true}"#).is_err());
    }

    #[test]
    fn unknown_fields_are_refused_by_the_strict_reader_only() {
        let json = br#"{"id": "m", "framwork": "onnx"}"#;
        let err = ModelInfo::from_json_strict(json).unwrap_err().to_string();
        assert!(err.contains("unknown field `framwork`"), "{err}");
        let lenient: ModelInfo = serde_json::from_slice(json).unwrap();
        assert_eq!(lenient.id, "m");
        assert!(ModelInfo::from_json_strict(b"[]").is_err());
        assert!(ModelInfo::from_json_strict(br#"{"blob_size": -1}"#).is_err());
    }

    #[test]
    fn a_field_given_twice_is_refused_by_both_readers() {
        // Found by fuzzing: the strict reader kept the last value, where the lenient one refuses.
        let json =
            br#"{"id": "m", "kbs_url": "http://a/kbs/v1/keys/k/transfer", "kbs_url": "http://b"}"#;
        let err = ModelInfo::from_json_strict(json).unwrap_err().to_string();
        assert!(err.contains("duplicate field `kbs_url`"), "{err}");
        assert!(serde_json::from_slice::<ModelInfo>(json).is_err());
    }
}
