//! The one JSON policy for everything read from outside: watch events (live and replayed),
//! records (replay files, the ingest API) and custom resources.
//!
//! - **Duplicate keys** in an object are an error that names the key, whether the object is a
//!   record, an envelope, a pod or a pod's labels and annotations (serde's derived types
//!   refuse a repeated field; maps read through [`unique_map`]). A repeated key means the
//!   writer is confused, and which value wins is not something to guess.
//! - **Timestamps** are read by the one parser, [`crate::util::time::Ts::parse`]: RFC 3339 with an
//!   offset, from 1970 to 2100; a far-future sentinel is refused rather than taken as a time.
//! - **Unknown fields**: records and replay envelopes refuse them (a typo must not silently
//!   drop a field); Kubernetes objects ignore the many fields sandwatch does not read.
//! - **Values are judged one by one**: one bad value is reported with its position and
//!   skipped, and the rest are used.

use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserializer;
use serde::de::{MapAccess, Visitor};

/// Reads a JSON object of strings (labels, annotations), refusing a key given twice.
pub fn unique_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of strings")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate key {k:?}"
                    )));
                }
                out.insert(k, v);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(V)
}

/// Why a body (or one value of it) is not JSON.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not a JSON array: {0}")]
    NotArray(serde_json::Error),
    #[error("not valid JSON: {0}")]
    NotJson(serde_json::Error),
}

/// Splits a body that is either one JSON array or NDJSON (one value per line) into its raw
/// values, each to be decoded on its own: `Err` for the whole body when it is neither; per
/// value, `Err` with the value's reason when that value is not JSON.
pub fn values(body: &str) -> Result<Vec<Result<&RawValue, BodyError>>, BodyError> {
    if body.trim_start().starts_with('[') {
        let values: Vec<&RawValue> = serde_json::from_str(body).map_err(BodyError::NotArray)?;
        return Ok(values.into_iter().map(Ok).collect());
    }
    Ok(body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<&RawValue>(l).map_err(BodyError::NotJson))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Labels {
        #[serde(default, deserialize_with = "unique_map")]
        labels: Option<BTreeMap<String, String>>,
    }

    #[test]
    fn a_key_given_twice_is_an_error_that_names_it() {
        let ok: Labels = serde_json::from_str(r#"{"labels":{"a":"1","b":"2"}}"#).unwrap();
        assert_eq!(ok.labels.unwrap().len(), 2);
        let none: Labels = serde_json::from_str(r#"{"labels":null}"#).unwrap();
        assert!(none.labels.is_none());
        let e = serde_json::from_str::<Labels>(r#"{"labels":{"a":"1","a":"2"}}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"a\""), "{e}");
    }

    #[test]
    fn bodies_split_into_values() {
        let v = values(r#"[{"a":1}, 5]"#).unwrap();
        assert_eq!(v.len(), 2);
        let v = values("{\"a\":1}\n\nnot json\n").unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[1].is_err());
        assert!(values("[{").is_err());
    }
}
