//! Reading a Prometheus text exposition in tests: find a sample by name and labels, whatever
//! other labels (the replica's `shard`) it carries and in whatever order.

use std::collections::BTreeMap;

/// A sample line: name, labels, value.
fn parse(line: &str) -> Option<(&str, BTreeMap<String, String>, &str)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    Some((name, labels_of(labels), value))
}

/// `a="x",b="y"` as a map (label values in sandwatch's tests hold no `",`).
fn labels_of(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// Splits `name{labels} value` (labels and value optional) as a test writes it.
fn expected(selector: &str) -> (String, BTreeMap<String, String>, Option<String>) {
    let (sel, value) = match selector.rsplit_once("} ") {
        Some((s, v)) => (format!("{s}}}"), Some(v.to_string())),
        None => match selector.split_once(' ') {
            Some((s, v)) if !s.contains('{') => (s.to_string(), Some(v.to_string())),
            _ => (selector.to_string(), None),
        },
    };
    match sel.split_once('{') {
        Some((name, rest)) => (
            name.to_string(),
            labels_of(rest.strip_suffix('}').unwrap_or(rest)),
            value,
        ),
        None => (sel, BTreeMap::new(), value),
    }
}

/// The value of the first sample with this name and at least these labels.
pub fn value(text: &str, selector: &str) -> Option<f64> {
    let (name, labels, _) = expected(selector);
    text.lines().filter_map(parse).find_map(|(n, l, v)| {
        (n == name && labels.iter().all(|(k, x)| l.get(k) == Some(x)))
            .then(|| v.parse().unwrap_or(f64::NAN))
    })
}

/// Whether a sample `name{labels} VALUE` is there (with these labels among its own, and this
/// value when one is given).
pub fn has(text: &str, selector: &str) -> bool {
    let (name, labels, want) = expected(selector);
    text.lines().filter_map(parse).any(|(n, l, v)| {
        n == name
            && labels.iter().all(|(k, x)| l.get(k) == Some(x))
            && want
                .as_deref()
                .is_none_or(|w| w.parse::<f64>().ok() == v.parse::<f64>().ok())
    })
}
