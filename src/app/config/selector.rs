//! Kubernetes label selectors as a profile writes them (`app=sandbox,tier!=warm`), parsed into
//! kube's [`Selector`], which matches label maps and renders back for the API server.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector};

/// Parses a Kubernetes label selector string (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) into
/// kube's [`Selector`], which matches label maps and renders back for the API server.
/// A label selector that cannot be parsed: what is wrong with which term.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

pub fn parse_selector(text: &str) -> Result<Selector, SelectorError> {
    let mut exprs = Vec::new();
    for term in split_outside_parens(text) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        exprs.push(parse_term(term).map_err(SelectorError)?);
    }
    Ok(Selector::from_iter(exprs))
}

/// The label keys a selector reads (of the terms that parse).
pub fn selector_keys(text: &str) -> Vec<String> {
    split_outside_parens(text)
        .into_iter()
        .filter_map(|t| parse_term(t.trim()).ok())
        .map(|e| match e {
            Expression::In(k, _)
            | Expression::NotIn(k, _)
            | Expression::Equal(k, _)
            | Expression::NotEqual(k, _)
            | Expression::Exists(k)
            | Expression::DoesNotExist(k) => k,
        })
        .collect()
}

fn split_outside_parens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_term(term: &str) -> Result<Expression, String> {
    let check_key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        let valid = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if valid {
            Ok(k.to_string())
        } else {
            Err(format!("{k:?} is not a valid label key"))
        }
    };
    let check_value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            Ok(v.to_string())
        } else {
            Err(format!("{v:?} is not a valid label value"))
        }
    };
    let set = |rest: &str| -> Result<BTreeSet<String>, String> {
        let rest = rest.trim();
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| {
                format!("expected a parenthesised list after the operator in {term:?}")
            })?;
        inner.split(',').map(check_value).collect()
    };
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(check_key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Expression::NotEqual(check_key(k)?, check_value(v)?));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Expression::Equal(check_key(k)?, check_value(v)?));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(Expression::Equal(check_key(k)?, check_value(v)?));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Expression::Exists(check_key(key)?)),
        Some(rest) if rest.starts_with("notin") => {
            Ok(Expression::NotIn(check_key(key)?, set(&rest[5..])?))
        }
        Some(rest) if rest.starts_with("in") => {
            Ok(Expression::In(check_key(key)?, set(&rest[2..])?))
        }
        Some(_) => Err(format!(
            "{term:?} is not a selector term (use k=v, k!=v, k in (a,b), k notin (a,b), k or !k)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    #[test]
    fn selectors_parse_and_match() {
        let s = parse_selector(
            "centaur.ai/managed=true,centaur.ai/warm!=true,!centaur.ai/iron-proxy,tier in (a, b)",
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.matches(&labels(&[("centaur.ai/managed", "true"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("centaur.ai/managed", "true"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[
            ("centaur.ai/managed", "true"),
            ("tier", "a"),
            ("centaur.ai/warm", "true")
        ])));
        assert_eq!(
            s.to_string(),
            "centaur.ai/managed=true,centaur.ai/warm!=true,!centaur.ai/iron-proxy,tier in (a,b)"
        );
        assert!(
            parse_selector("a in b")
                .unwrap_err()
                .to_string()
                .contains("parenthesised")
        );
        assert!(
            parse_selector("a b c")
                .unwrap_err()
                .to_string()
                .contains("not a selector term")
        );
    }
}
