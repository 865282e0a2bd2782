//! The effective config: what the daemon runs with once every profile is laid over the
//! preset it names, as one YAML file that names no preset (`check-config --print`).
//!
//! It is built the way [`super::load`] builds the profiles (the same merge), from the file as
//! written, untyped: keys set to `null` (removed from a preset) are left out, and fields that
//! are not written anywhere keep their defaults, which are not printed. The text it gives is
//! itself a valid config of the same profiles.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use super::{ConfigError, ConfigErrors, load, merge, parse_yaml, preset_value};

/// What heads the printed file.
const HEAD: &str = "# The effective config: each profile laid over its preset. Fields not shown take their\n# defaults.\n";

/// The effective config of a config file's text, if it is valid.
pub fn effective(text: &str) -> Result<String, ConfigErrors> {
    load(text)?;
    let raw: Value = parse_yaml(text, "")?;
    let mut doc = Map::new();
    let mut profiles = Vec::new();
    for p in raw
        .get("profiles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut profile = p.clone();
        if let Some(name) = p.get("preset").and_then(Value::as_str) {
            let mut base = preset_value(name).map_err(|e| ConfigErrors(vec![e]))?;
            if let Value::Object(over) = &mut profile {
                over.remove("preset");
            }
            merge(&mut base, profile, 0);
            profile = base;
        }
        profiles.push(profile);
    }
    doc.insert("profiles".into(), Value::Array(profiles));
    if let Some(r) = raw.get("remediation") {
        doc.insert("remediation".into(), r.clone());
    }
    yaml(Value::Object(doc))
}

/// The effective config of one preset alone (remediation at its defaults).
pub fn effective_preset(name: &str) -> Result<String, ConfigErrors> {
    let profile = preset_value(name).map_err(|e| ConfigErrors(vec![e]))?;
    let mut doc = Map::new();
    doc.insert("profiles".into(), Value::Array(vec![profile]));
    yaml(Value::Object(doc))
}

fn yaml(mut doc: Value) -> Result<String, ConfigErrors> {
    drop_nulls(&mut doc);
    let body = serde_saphyr::to_string(&Ordered(&doc)).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            field: "(file)".into(),
            message: format!("cannot be written as YAML: {e}"),
        }])
    })?;
    Ok(format!("{HEAD}{body}"))
}

/// Removes every `key: null` (in a merged profile: a preset field the config removed).
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// A value written with `name` first in every map, the other keys in order, and lists of
/// plain values in flow style.
struct Ordered<'a>(&'a Value);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                let first = m.get_key_value("name");
                for (k, v) in first
                    .into_iter()
                    .chain(m.iter().filter(|(k, _)| *k != "name"))
                {
                    map.serialize_entry(k, &Ordered(v))?;
                }
                map.end()
            }
            // A list of plain values (states, container names) on one line, as in the presets.
            Value::Array(a)
                if !a.is_empty() && a.iter().all(|v| !v.is_object() && !v.is_array()) =>
            {
                serde_saphyr::FlowSeq(a).serialize(s)
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&Ordered(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::config::PRESETS;

    #[test]
    fn every_preset_printed_is_a_valid_config_of_the_same_profile() {
        for (name, _, _) in PRESETS {
            let text = effective_preset(name).unwrap();
            assert!(!text.contains("preset:"), "{text}");
            let config = load(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(config.profiles.names(), vec![name.to_string()]);
            assert_eq!(effective(&text).unwrap(), text, "printing is a fixed point");
        }
    }

    #[test]
    fn overrides_are_merged_and_removed_fields_left_out() {
        let text = "profiles:\n  - preset: generic\n    name: mine\n    pods:\n      agent_containers: [runner]\n      execution_key: null\n    grace:\n      absence: 5m\nremediation:\n  mode: dry_run\n";
        let printed = effective(text).unwrap();
        assert!(printed.starts_with(HEAD), "{printed}");
        let doc: Value = parse_yaml(&printed, "").unwrap();
        let p = &doc["profiles"][0];
        assert_eq!(p["name"], "mine");
        assert_eq!(p["pods"]["agent_containers"], serde_json::json!(["runner"]));
        assert_eq!(p["pods"]["selector"], "sandwatch.io/session", "{printed}");
        assert!(p["pods"].get("execution_key").is_none(), "{printed}");
        assert_eq!(p["grace"]["absence"], "5m");
        assert_eq!(p["sessions"]["suspended"], serde_json::json!(["suspended"]));
        assert_eq!(doc["remediation"]["mode"], "dry_run");
        assert!(load(&printed).is_ok(), "{printed}");
    }

    #[test]
    fn values_that_look_like_other_things_stay_strings() {
        let text = "profiles:\n  - preset: generic\n    sessions:\n      active: [\"in progress\", \"a,b\", \"yes\", \"007\", \"[x]\", \"null\", \"#1\"]\n";
        let printed = effective(text).unwrap();
        let doc: Value = parse_yaml(&printed, "").unwrap();
        assert_eq!(
            doc["profiles"][0]["sessions"]["active"],
            serde_json::json!(["in progress", "a,b", "yes", "007", "[x]", "null", "#1"]),
            "{printed}"
        );
        assert!(load(&printed).is_ok(), "{printed}");
    }

    #[test]
    fn an_invalid_config_is_not_printed() {
        let e = effective("profiles:\n  - preset: generic\n    grace:\n      absence: soon\n")
            .unwrap_err();
        assert!(e.to_string().contains("profiles[0].grace.absence"), "{e}");
    }
}
