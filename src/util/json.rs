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
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserializer;
use serde::de::{MapAccess, Visitor};

/// Reads a JSON object of strings (labels, annotations), refusing a key given twice.
pub fn unique_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    unique_map_of(d, None)
}

/// [`unique_map`], keeping only the entries whose key is in `keep` (sorted) when it is given:
/// the others are read as borrowed strings, checked like the kept ones, and dropped.
pub fn unique_map_of<'de, D: Deserializer<'de>>(
    d: D,
    keep: Option<&[String]>,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    d.deserialize_option(StringMap(keep))
}

/// The visitor of [`unique_map_of`]: an object of strings, or null.
struct StringMap<'k>(Option<&'k [String]>);

impl<'de> Visitor<'de> for StringMap<'_> {
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
        let Some(keep) = self.0 else {
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(duplicate(&k));
                }
                out.insert(k, v);
            }
            return Ok(Some(out));
        };
        // Every key is remembered (borrowed where it has no escapes) to refuse repeats: in a
        // list while there are few, in a set beyond.
        let mut few: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Str(k)) = map.next_key::<Str<'de>>()? {
            let Str(v) = map.next_value::<Str<'de>>()?;
            let repeated = if many.is_empty() && few.len() < 32 {
                few.contains(&k)
            } else {
                many.extend(few.drain(..));
                many.contains(&k)
            };
            if repeated {
                return Err(duplicate(&k));
            }
            if keep.binary_search_by(|x| x.as_str().cmp(&k)).is_ok() {
                out.insert(k.to_string(), v.into_owned());
            }
            if many.is_empty() {
                few.push(k);
            } else {
                many.insert(k);
            }
        }
        Ok(Some(out))
    }
}

fn duplicate<E: serde::de::Error>(k: &str) -> E {
    E::custom(format_args!("duplicate key {k:?}"))
}

/// A string, borrowed from the input when it has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct S;
        impl<'de> Visitor<'de> for S {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(S)
    }
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

    /// Keeping a few keys reads the others exactly as strictly: the same errors, word for
    /// word, over many maps (repeats early, late, past the list's length; escapes; wrong types).
    #[test]
    fn keeping_a_few_keys_checks_the_rest_as_strictly() {
        let keep = ["b".to_string(), "k\"q".to_string(), "x40".to_string()];
        let read = |text: &str, keep: Option<&[String]>| {
            let mut de = serde_json::Deserializer::from_str(text);
            unique_map_of(&mut de, keep).map_err(|e| e.to_string())
        };
        let mut maps: Vec<String> = vec![
            "null".into(),
            "{}".into(),
            r#"{"a":"1","b":"2"}"#.into(),
            r#"{"a":"1","a":"2"}"#.into(),
            r#"{"b":"1","a":"2","b":"3"}"#.into(),
            r#"{"a":5,"b":"2"}"#.into(),
            r#"{"b":"2","a":null}"#.into(),
            r#"{"k\"q":"v\n","a\u0041":"w"}"#.into(),
            r#"{"aA":"1","a\u0041":"2"}"#.into(),
            r#"["a"]"#.into(),
            r#""a""#.into(),
        ];
        for repeat in [0, 31, 32, 33, 60] {
            let mut entries: Vec<String> = (0..50).map(|i| format!(r#""x{i}":"{i}""#)).collect();
            entries.insert(50.min(repeat + 1), format!(r#""x{repeat}":"again""#));
            maps.push(format!("{{{}}}", entries.join(",")));
        }
        for m in &maps {
            let all = read(m, None);
            let kept = read(m, Some(&keep));
            match (&all, &kept) {
                (Ok(all), Ok(kept)) => {
                    let want: Option<BTreeMap<String, String>> = all.as_ref().map(|all| {
                        all.iter()
                            .filter(|(k, _)| keep.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    });
                    assert_eq!(kept, &want, "{m}");
                }
                _ => assert_eq!(all.as_ref().err(), kept.as_ref().err(), "{m}"),
            }
        }
        assert_eq!(
            read(&maps[4], Some(&keep)).unwrap_err(),
            "duplicate key \"b\" at line 1 column 25"
        );
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
