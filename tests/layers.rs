//! The shape of `src/`: imports point one way between the layers, components of one layer
//! never import one another, modules import each other without cycles, and no file or
//! function grows past what a reader takes in at once.
//!
//! ```text
//!  util  <-  model  <-  core  <-  sources | sinks | remediation  <-  app  <-  main
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layer of a top-level module, and its rank (imports go to lower ranks only, or within
/// one component).
fn layer(top: &str) -> Option<(&'static str, u8)> {
    Some(match top {
        "util" => ("util", 0),
        "model" => ("model", 1),
        "core" => ("core", 2),
        "sources" => ("sources", 3),
        "sinks" => ("sinks", 3),
        "remediation" => ("remediation", 3),
        "app" => ("app", 4),
        _ => return None,
    })
}

/// The code of a file without comments, string literals and its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        // Drop string literals (crude: text between double quotes on one line).
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The module a file is (`core::world` for `src/core/world/records.rs`: a folder is one
/// module to the world outside it), and its top-level module.
fn module_of(path: &Path) -> (String, String) {
    let rel = path.strip_prefix(src()).unwrap();
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    let top = parts[0].clone();
    let module = match parts.len() {
        1 => top.clone(),
        _ => format!("{}::{}", parts[0], parts[1]),
    };
    (module, top)
}

/// Every `crate::a::b` path a piece of code names, as `a::b` (or `a` alone), expanding
/// `crate::{a::x, b}` groups.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if rest.starts_with('{') {
            let end = rest.find('}').unwrap_or(rest.len());
            for item in rest[1..end].split(',') {
                out.push(path_head(item.trim()));
            }
        } else {
            out.push(path_head(rest));
        }
    }
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

fn path_head(s: &str) -> String {
    let words: Vec<&str> = s
        .split("::")
        .take(2)
        .map(|w| {
            w.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")
        })
        .collect();
    match words.as_slice() {
        [a, b] if !b.is_empty() && b.chars().next().is_some_and(|c| c.is_lowercase()) => {
            format!("{a}::{b}")
        }
        [a, ..] => a.to_string(),
        [] => String::new(),
    }
}

#[test]
fn imports_point_one_way_between_the_layers() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut wrong = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &all {
        let (module, top) = module_of(f);
        let Some((from_layer, from_rank)) = layer(&top) else {
            continue; // lib.rs, main.rs
        };
        let text = std::fs::read_to_string(f).unwrap();
        for path in crate_paths(&code(&text)) {
            let to_top = path.split("::").next().unwrap();
            let Some((to_layer, to_rank)) = layer(to_top) else {
                wrong.push(format!("{}: crate::{path} is not in a layer", f.display()));
                continue;
            };
            let same_component = to_layer == from_layer;
            if to_rank > from_rank || (to_rank == from_rank && !same_component) {
                wrong.push(format!(
                    "{} ({from_layer}) imports crate::{path} ({to_layer})",
                    f.strip_prefix(src()).unwrap().display()
                ));
            }
            if path.contains("::") && path != module {
                graph
                    .entry(module.clone())
                    .or_default()
                    .insert(path.clone());
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    // No cycle between modules (a folder counts as one module).
    let mut cycles = Vec::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if next == start {
                    cycles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// Whether a (trimmed) line starts a function: `fn`, after any visibility (`pub`,
/// `pub(crate)`, `pub(super)`, ...) and qualifiers (`async`, `const`, `unsafe`).
fn is_fn_line(t: &str) -> bool {
    let mut rest = t;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = match r.strip_prefix('(') {
            Some(r) => r.split_once(')').map_or("", |(_, r)| r),
            None => r,
        }
        .trim_start();
    }
    for q in ["const ", "async ", "unsafe "] {
        if let Some(r) = rest.strip_prefix(q) {
            rest = r;
        }
    }
    rest.starts_with("fn ")
}

#[test]
fn no_file_or_function_grows_past_a_reading() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut long = Vec::new();
    for f in &all {
        let text = std::fs::read_to_string(f).unwrap();
        let body = match text.find("#[cfg(test)]") {
            Some(i) => &text[..i],
            None => &text,
        };
        let lines: Vec<&str> = body.lines().collect();
        let rel = f.strip_prefix(src()).unwrap().display().to_string();
        if lines.len() > 800 {
            long.push(format!("{rel}: {} lines", lines.len()));
        }
        // A function is `fn name` at some indent up to the `}` at the same indent.
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            let is_fn = is_fn_line(t);
            if !is_fn || t.ends_with(';') {
                continue;
            }
            let end = lines[i + 1..]
                .iter()
                .position(|m| {
                    m.len() > indent
                        && m.starts_with(&format!("{}}}", " ".repeat(indent)))
                        && m.trim() == "}"
                        || (m.starts_with(&format!("{}}}", " ".repeat(indent)))
                            && m.trim().starts_with('}')
                            && m.len() - m.trim_start().len() == indent)
                })
                .map_or(lines.len(), |k| i + 1 + k);
            let n = end - i + 1;
            if n > 80 {
                let name = t
                    .split("fn ")
                    .nth(1)
                    .unwrap_or("")
                    .split(['(', '<'])
                    .next()
                    .unwrap_or("");
                long.push(format!("{rel}:{}: fn {name} is {n} lines", i + 1));
            }
        }
    }
    assert!(
        long.is_empty(),
        "past ~800 lines a file, ~80 a function:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_library_has_typed_errors_and_no_command_line() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut wrong = Vec::new();
    for f in &all {
        let rel = f.strip_prefix(src()).unwrap().display().to_string();
        if rel == "main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let code = code(&text);
        for (i, line) in code.lines().enumerate() {
            for word in ["anyhow", "clap::", "clap ", "use clap"] {
                if line.contains(word) {
                    wrong.push(format!(
                        "{rel}:{}: {} (only main uses it)",
                        i + 1,
                        line.trim()
                    ));
                }
            }
            // A public function answers with a typed error, not a string.
            if line.trim_start().starts_with("pub") && line.contains("fn ") {
                let sig: String = code.lines().skip(i).take(8).collect::<Vec<_>>().join(" ");
                let sig: String = sig
                    .split('{')
                    .next()
                    .unwrap_or("")
                    .split(" where ")
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                if sig.contains("->Result<") && sig.ends_with(",String>") {
                    wrong.push(format!(
                        "{rel}:{}: {} returns a String error",
                        i + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
