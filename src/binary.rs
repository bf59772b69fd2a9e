//! Binary payloads: bytes inside JSON, as the protocol carries them.
//!
//! JSON has no bytes, so the spec carries them as an object with one key, `{"$bytes": "<base64>"}`
//! (standard alphabet, with padding). The clients turn such objects into their own byte types
//! (`Uint8Array` in JavaScript, [`Binary`] in Rust) and back, anywhere in a payload, so neither
//! side base64-encodes by hand.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The key of the object that carries bytes in JSON.
pub const BYTES_KEY: &str = "$bytes";

/// Bytes in a message payload; travels as `{"$bytes": "<base64>"}`.
///
/// Put it anywhere in the data you emit or receive:
///
/// ```
/// use simpleio::Binary;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Upload { name: String, content: Binary }
///
/// let up = Upload { name: "a.bin".into(), content: Binary::from(vec![0u8, 159, 146, 150]) };
/// let json = serde_json::to_string(&up).unwrap();
/// assert_eq!(json, r#"{"name":"a.bin","content":{"$bytes":"AJ+Slg=="}}"#);
/// let back: Upload = serde_json::from_str(&json).unwrap();
/// assert_eq!(&back.content[..], &[0, 159, 146, 150]);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Binary(pub Bytes);

impl fmt::Debug for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Binary({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for Binary {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Binary {
    fn from(v: Vec<u8>) -> Self {
        Binary(Bytes::from(v))
    }
}

impl From<Bytes> for Binary {
    fn from(b: Bytes) -> Self {
        Binary(b)
    }
}

impl From<&[u8]> for Binary {
    fn from(b: &[u8]) -> Self {
        Binary(Bytes::copy_from_slice(b))
    }
}

impl From<Binary> for Bytes {
    fn from(b: Binary) -> Self {
        b.0
    }
}

impl Serialize for Binary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(BYTES_KEY, &STANDARD.encode(&self.0))?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BinaryVisitor)
    }
}

struct BinaryVisitor;

impl<'de> Visitor<'de> for BinaryVisitor {
    type Value = Binary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object {{\"{BYTES_KEY}\": \"<base64>\"}}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Binary, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != BYTES_KEY || bytes.is_some() {
                return Err(de::Error::custom(format!(
                    "bytes travel as {{\"{BYTES_KEY}\": \"<base64>\"}} alone, found key {key:?}"
                )));
            }
            let text: std::borrow::Cow<'de, str> = map.next_value()?;
            let decoded = STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format!("invalid base64 in {BYTES_KEY}: {e}")))?;
            bytes = Some(Binary::from(decoded));
        }
        bytes.ok_or_else(|| de::Error::missing_field(BYTES_KEY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_json() {
        let all: Vec<u8> = (0..=255).collect();
        let json = serde_json::to_string(&Binary::from(all.clone())).expect("encode");
        let back: Binary = serde_json::from_str(&json).expect("decode");
        assert_eq!(&back[..], &all[..]);
    }

    #[test]
    fn anything_but_the_one_key_is_refused() {
        assert!(serde_json::from_str::<Binary>(r#"{"$bytes":"AA==","x":1}"#).is_err());
        assert!(serde_json::from_str::<Binary>(r#"{"other":"AA=="}"#).is_err());
        assert!(serde_json::from_str::<Binary>(r#"{"$bytes":"not base64!"}"#).is_err());
        assert!(serde_json::from_str::<Binary>(r#""AA==""#).is_err());
    }
}
