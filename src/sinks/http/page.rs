//! The status page (`GET /`): what an on-call engineer opens first.
//!
//! Part of the HTTP sink; a pure function of the latest [`Snapshot`], remediation's
//! [`RemediationView`] and [`About`], rendered as plain HTML: no script, no external asset,
//! every value from outside escaped. It shows the daemon (version, uptime, shard, leader,
//! remediation mode), every source with its health and times, the rules each profile runs,
//! and the open findings grouped by the pod or record they concern, filtered, sorted and paged
//! through the URL (`/?kind=a,b&profile=&namespace=&sort=&page=`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::core::rules;
use crate::model::finding::{FindingKind, OpenFinding};
use crate::model::view::{About, ActionState, RemediationView, Snapshot};
use crate::util::text::clip;
use crate::util::time::Ts;

/// Where the runbooks live; each finding kind links to its alert's section.
const RUNBOOKS: &str = "https://github.com/sandwatch/sandwatch/blob/main/docs/runbooks.md";
/// Groups per page unless `per` says otherwise, and at most.
const DEFAULT_PER: usize = 50;
const MAX_PER: usize = 500;
const PARAMS: &str = "kind, profile, namespace, sort, page, per";

/// How the groups are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sort {
    /// The group whose latest finding opened last, first.
    #[default]
    Newest,
    /// The group open longest, first.
    Oldest,
    /// By the first finding kind, then oldest first.
    Kind,
    /// By namespace and subject name.
    Namespace,
}

impl Sort {
    const ALL: [(Sort, &'static str); 4] = [
        (Sort::Newest, "newest"),
        (Sort::Oldest, "oldest"),
        (Sort::Kind, "kind"),
        (Sort::Namespace, "namespace"),
    ];

    fn as_str(self) -> &'static str {
        Sort::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, n)| n)
    }
}

/// A page URL that cannot be read; says which parameter and value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(String);

/// What the page shows, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    pub kinds: Vec<FindingKind>,
    pub profile: Option<String>,
    pub namespace: Option<String>,
    pub sort: Sort,
    /// From 1.
    pub page: usize,
    pub per: usize,
}

impl Default for PageQuery {
    fn default() -> PageQuery {
        PageQuery {
            kinds: Vec::new(),
            profile: None,
            namespace: None,
            sort: Sort::default(),
            page: 1,
            per: DEFAULT_PER,
        }
    }
}

impl PageQuery {
    /// Reads the query string's pairs; an unknown parameter or a bad value is an error naming
    /// it. Empty values (an untouched form field) select nothing.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<PageQuery, BadQuery> {
        Self::read(pairs).map_err(BadQuery)
    }

    fn read(pairs: Vec<(String, String)>) -> Result<PageQuery, String> {
        let mut q = PageQuery::default();
        for (key, value) in pairs {
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "kind" => super::read_kinds(&value, &mut q.kinds)?,
                "profile" => q.profile = Some(value),
                "namespace" => q.namespace = Some(value),
                "sort" => {
                    q.sort = Sort::ALL
                        .iter()
                        .find(|(_, n)| *n == value)
                        .map(|(s, _)| *s)
                        .ok_or_else(|| {
                            format!("sort: {value:?} is not newest, oldest, kind or namespace")
                        })?;
                }
                "page" => q.page = number(&key, &value, usize::MAX)?,
                "per" => q.per = number(&key, &value, MAX_PER)?,
                other => {
                    return Err(format!("{other:?} is not a parameter of / ({PARAMS})"));
                }
            }
        }
        Ok(q)
    }

    fn takes(&self, f: &OpenFinding) -> bool {
        let d = &f.finding;
        (self.kinds.is_empty() || self.kinds.contains(&d.kind))
            && self.profile.as_deref().is_none_or(|p| *d.profile == *p)
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| d.namespace.as_deref() == Some(n))
    }

    /// This query's URL, on another page.
    fn url(&self, page: usize) -> String {
        let mut u = String::from("/?");
        if !self.kinds.is_empty() {
            let kinds: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
            let _ = write!(u, "kind={}&", kinds.join(","));
        }
        for (k, v) in [("profile", &self.profile), ("namespace", &self.namespace)] {
            if let Some(v) = v {
                let _ = write!(u, "{k}={}&", percent(v));
            }
        }
        let _ = write!(u, "sort={}&page={page}", self.sort.as_str());
        if self.per != DEFAULT_PER {
            let _ = write!(u, "&per={}", self.per);
        }
        u
    }
}

fn number(key: &str, value: &str, max: usize) -> Result<usize, String> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{key}: {value:?} is not a number from 1 to {max}"))
}

/// Escapes text for HTML content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// "3 s", "4 min 05 s", "2 h 03 min", "3 d 04 h".
fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        3600..86400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {:02} h", s / 86400, s % 86400 / 3600),
    }
}

/// A time, with how long ago (or from now) it is.
fn when(at: Ts, now: Ts) -> String {
    let d = now.0.saturating_sub(at.0) as f64 / 1000.0;
    if d >= 0.0 {
        format!("{at} ({} ago)", age(d))
    } else {
        format!("{at} (in {})", age(-d))
    }
}

/// The runbook section for a finding kind: its alert's heading.
fn runbook(kind: FindingKind) -> Option<String> {
    let rule = rules::ALL.iter().find(|r| r.kind() == kind)?;
    Some(format!(
        "{RUNBOOKS}#{}",
        rule.series().alert.to_ascii_lowercase()
    ))
}

/// The explanation of a finding's subject (`/api/v1/explain`).
fn explain_url(f: &OpenFinding) -> String {
    use crate::model::ids::Subject;
    let subject = match &f.subject {
        Subject::Pod {
            namespace, name, ..
        } => format!("pod={}", percent(&format!("{namespace}/{name}"))),
        Subject::Record(k) => match &k.namespace {
            Some(ns) => format!(
                "{}={}&namespace={}",
                k.kind.as_str(),
                percent(&k.id),
                percent(ns)
            ),
            None => format!("{}={}", k.kind.as_str(), percent(&k.id)),
        },
    };
    format!(
        "/api/v1/explain?{subject}&profile={}",
        percent(&f.finding.profile)
    )
}

/// A shell word: as is when it is plainly safe, else single-quoted.
fn shell(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The findings about one pod (or, without a pod, one record), as a group of rows.
struct Group<'a> {
    /// What the group concerns, for its heading.
    title: String,
    /// A `kubectl` line for the pod, when there is one.
    kubectl: Option<String>,
    namespace: &'a str,
    findings: Vec<&'a OpenFinding>,
}

impl<'a> Group<'a> {
    fn newest(&self) -> Ts {
        self.findings
            .iter()
            .map(|f| f.opened_at)
            .max()
            .unwrap_or_default()
    }

    fn oldest(&self) -> Ts {
        self.findings
            .iter()
            .map(|f| f.opened_at)
            .min()
            .unwrap_or_default()
    }
}

/// The selected findings, grouped by pod, else session, execution or sandbox, and sorted.
fn groups<'a>(snap: &'a Snapshot, q: &PageQuery) -> Vec<Group<'a>> {
    let mut by: BTreeMap<(u8, &str, &str, &str), Group<'a>> = BTreeMap::new();
    for f in snap.findings.iter().filter(|f| q.takes(f)) {
        let d = &f.finding;
        let ns = d.namespace.as_deref().unwrap_or("");
        let (rank, what, id) = if let Some(pod) = d.pod.as_deref() {
            (0, "pod", pod)
        } else if let Some(s) = d.session.as_deref() {
            (1, "session", s)
        } else if let Some(e) = d.execution.as_deref() {
            (2, "execution", e)
        } else {
            (3, "sandbox", d.sandbox.as_deref().unwrap_or("-"))
        };
        let group = by
            .entry((rank, &d.profile, ns, id))
            .or_insert_with(|| Group {
                title: match ns {
                    "" => format!("{what} {id}"),
                    ns => format!("{what} {ns}/{id}"),
                },
                kubectl: (rank == 0).then(|| match ns {
                    "" => format!("kubectl describe pod {}", shell(&clip(id))),
                    ns => format!("kubectl -n {} describe pod {}", shell(ns), shell(&clip(id))),
                }),
                namespace: ns,
                findings: Vec::new(),
            });
        group.findings.push(f);
    }
    let mut out: Vec<Group<'a>> = by.into_values().collect();
    for g in &mut out {
        g.findings.sort_by_key(|f| (f.opened_at, f.id));
    }
    match q.sort {
        Sort::Newest => out.sort_by_key(|g| std::cmp::Reverse(g.newest())),
        Sort::Oldest => out.sort_by_key(|g| g.oldest()),
        Sort::Kind => out.sort_by_key(|g| (g.findings[0].finding.kind.as_str(), g.oldest())),
        // Findings without a namespace (records that name none) come last.
        Sort::Namespace => out.sort_by(|a, b| {
            let key = |g: &Group<'a>| (g.namespace.is_empty(), g.namespace);
            key(a).cmp(&key(b)).then_with(|| a.title.cmp(&b.title))
        }),
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
    table{border-collapse:collapse;margin-bottom:1em}\
    td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;font-size:14px;vertical-align:top}\
    th{background:#f4f4f4}.bad{color:#b00}.ok{color:#070}.dim{color:#777}\
    tr.group td{background:#eef3fb;font-weight:bold;border-top:2px solid #9ab}\
    code{background:#f4f4f4;padding:1px 4px;user-select:all}form{margin:1em 0}";

/// The whole page.
pub fn render(
    snap: &Snapshot,
    about: &About,
    remediation: &RemediationView,
    q: &PageQuery,
    now: Ts,
) -> String {
    let mut h = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sandwatch</title><link rel=\"icon\" href=\"data:,\">\
         <meta http-equiv=\"refresh\" content=\"15\"><style>{STYLE}</style></head><body><h1>sandwatch</h1>"
    );
    daemon(&mut h, snap, about, remediation, now);
    findings(&mut h, snap, remediation, q, now);
    sources(&mut h, snap, now);
    rules_per_profile(&mut h, snap);
    h.push_str(
        "<p><a href=\"/api/v1/findings\">findings (JSON)</a> · <a href=\"/readyz\">readiness</a> · \
         <a href=\"/metrics\">metrics</a></p></body></html>",
    );
    h
}

/// The line about the daemon itself, and whether its sources can be trusted.
fn daemon(h: &mut String, snap: &Snapshot, about: &About, rem: &RemediationView, now: Ts) {
    let remediation = match about.remediation {
        None => "off (no action configured)".to_string(),
        Some(mode) => format!(
            "{mode}, {}",
            if rem.leader {
                "this replica leads"
            } else {
                "another replica leads"
            }
        ),
    };
    let _ = write!(
        h,
        "<p id=\"daemon\">version {} · up {} (since {}) · shard {} · remediation: {} · {} pods, {} records tracked</p>",
        escape(about.version),
        age(now.secs_since(about.started_at)),
        about.started_at,
        escape(&about.shard),
        escape(&remediation),
        snap.pods,
        snap.records,
    );
    let down: Vec<&str> = snap
        .sources
        .iter()
        .filter(|s| !s.healthy())
        .map(|s| s.name.as_str())
        .collect();
    if down.is_empty() {
        let _ = write!(
            h,
            "<p class=\"ok\" id=\"health\">All {} sources synced and fresh.</p>",
            snap.sources.len()
        );
    } else {
        let _ = write!(
            h,
            "<p class=\"bad\" id=\"health\">Not synced or stale: {}. Findings that rest on them are held.</p>",
            escape(&down.join(", "))
        );
    }
}

/// The filter form, the grouped findings of this page, and the page links.
fn findings(h: &mut String, snap: &Snapshot, rem: &RemediationView, q: &PageQuery, now: Ts) {
    let groups = groups(snap, q);
    let selected: usize = groups.iter().map(|g| g.findings.len()).sum();
    let pages = groups.len().div_ceil(q.per).max(1);
    let page = q.page.min(pages);
    let _ = write!(
        h,
        "<h2 id=\"count\">{selected} open findings ({} in all), {} groups</h2>",
        snap.findings.len(),
        groups.len()
    );
    filter_form(h, snap, q);
    h.push_str(
        "<table id=\"findings\"><tr><th>kind</th><th>reason</th><th>evidence</th><th>opened</th>\
         <th>container (exit)</th><th>record state</th><th>retries after death</th><th>remediation</th></tr>",
    );
    for g in groups.iter().skip((page - 1) * q.per).take(q.per) {
        group(h, g, rem, now);
    }
    h.push_str("</table>");
    let _ = write!(h, "<p id=\"pages\">page {page} of {pages}");
    if page > 1 {
        let _ = write!(
            h,
            " · <a href=\"{}\">previous</a>",
            escape(&q.url(page - 1))
        );
    }
    if page < pages {
        let _ = write!(h, " · <a href=\"{}\">next</a>", escape(&q.url(page + 1)));
    }
    h.push_str("</p>");
}

fn filter_form(h: &mut String, snap: &Snapshot, q: &PageQuery) {
    h.push_str("<form method=\"get\" action=\"/\"><label>kind <select name=\"kind\"><option value=\"\">any</option>");
    for k in FindingKind::ALL {
        let sel = if q.kinds == [*k] { " selected" } else { "" };
        let _ = write!(h, "<option{sel}>{k}</option>");
    }
    h.push_str(
        "</select></label> <label>profile <select name=\"profile\"><option value=\"\">any</option>",
    );
    let mut profiles: Vec<&str> = snap.rules.iter().map(|(p, _, _)| &**p).collect();
    profiles.dedup();
    for p in profiles {
        let sel = if q.profile.as_deref() == Some(p) {
            " selected"
        } else {
            ""
        };
        let _ = write!(h, "<option{sel}>{}</option>", escape(p));
    }
    let _ = write!(
        h,
        "</select></label> <label>namespace <input name=\"namespace\" value=\"{}\"></label> <label>sort <select name=\"sort\">",
        escape(q.namespace.as_deref().unwrap_or(""))
    );
    for (s, name) in Sort::ALL {
        let sel = if q.sort == s { " selected" } else { "" };
        let _ = write!(h, "<option{sel}>{name}</option>");
    }
    h.push_str("</select></label> <button>apply</button> <a href=\"/\">clear</a></form>");
}

fn group(h: &mut String, g: &Group<'_>, rem: &RemediationView, now: Ts) {
    let first = &g.findings[0].finding;
    let mut also = Vec::new();
    for (what, v) in [
        ("profile", Some(&first.profile)),
        ("session", first.session.as_ref()),
        ("execution", first.execution.as_ref()),
        ("sandbox", first.sandbox.as_ref()),
    ] {
        if let Some(v) = v.filter(|v| !g.title.ends_with(&format!(" {v}"))) {
            also.push(format!("{what} {}", escape(&clip(v))));
        }
    }
    let _ = write!(
        h,
        "<tr class=\"group\"><td colspan=\"8\">{} <span class=\"dim\">{}</span>",
        escape(&clip(&g.title)),
        also.join(" · ")
    );
    if let Some(k) = &g.kubectl {
        let _ = write!(h, " <code>{}</code>", escape(k));
    }
    h.push_str("</td></tr>");
    for f in &g.findings {
        row(h, f, rem.findings.get(&f.id), now);
    }
}

fn row(h: &mut String, f: &OpenFinding, act: Option<&ActionState>, now: Ts) {
    let d = &f.finding;
    let kind = match runbook(d.kind) {
        Some(url) => format!("<a href=\"{}\">{}</a>", escape(&url), d.kind),
        None => d.kind.to_string(),
    };
    let kind = format!(
        "{kind} <a class=\"why\" href=\"{}\">why</a>",
        escape(&explain_url(f))
    );
    let container = match (&d.container, d.exit_code) {
        (Some(c), Some(code)) => format!("{} ({code})", escape(&clip(c))),
        (Some(c), None) => escape(&clip(c)),
        (None, Some(code)) => format!("({code})"),
        (None, None) => "-".to_string(),
    };
    let _ = write!(
        h,
        "<tr class=\"finding\"><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td><td>{container}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(&clip(&d.reason)),
        when(f.evidence_at, now),
        when(f.opened_at, now),
        d.state
            .as_deref()
            .map_or_else(|| "-".to_string(), |s| escape(&clip(s))),
        f.retries_after_death,
        act.map_or_else(|| "-".to_string(), |a| action(a, now)),
    );
}

/// Remediation's state for one finding, in words.
fn action(a: &ActionState, now: Ts) -> String {
    let mut s = a.action.to_string();
    if a.dry_run {
        s.push_str(" (dry run)");
    }
    match a.waiting {
        None => s.push_str(": due now"),
        Some(why) => {
            let _ = write!(s, ": {why}");
        }
    }
    if let Some(at) = a.next_at {
        let _ = write!(s, ", next attempt {}", when(at, now));
    }
    if let Some((at, outcome)) = a.last {
        let _ = write!(
            s,
            "; last call {outcome} {} ({} in all)",
            when(at, now),
            a.calls
        );
    }
    escape(&s)
}

fn sources(h: &mut String, snap: &Snapshot, now: Ts) {
    h.push_str(
        "<h2>Sources</h2><table id=\"sources\"><tr><th>source</th><th>feeds</th><th>scope</th>\
         <th>synced</th><th>fresh</th><th>last success</th><th>last error</th></tr>",
    );
    let yes = |b: bool| {
        if b {
            "<span class=\"ok\">yes</span>"
        } else {
            "<span class=\"bad\">no</span>"
        }
    };
    for s in &snap.sources {
        let times = snap.source_times.get(&s.name);
        let feeds: Vec<&str> = s.feeds.iter().map(|f| f.as_str()).collect();
        let success = times
            .and_then(|t| t.last_success)
            .map_or_else(|| "never".to_string(), |t| when(t, now));
        let error = times.and_then(|t| t.last_error.as_ref()).map_or_else(
            || "-".to_string(),
            |(at, e)| format!("{}: {}", when(*at, now), clip(e)),
        );
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.name),
            feeds.join(", "),
            escape(s.namespace.as_deref().unwrap_or("every namespace")),
            yes(s.synced),
            yes(s.fresh),
            success,
            escape(&error),
        );
    }
    h.push_str("</table>");
}

fn rules_per_profile(h: &mut String, snap: &Snapshot) {
    h.push_str("<h2>Rules</h2><table id=\"rules\"><tr><th>profile</th><th>running</th><th>off (a source it needs is not configured)</th></tr>");
    let names = |kinds: &[FindingKind]| -> Vec<&str> { kinds.iter().map(|k| k.as_str()).collect() };
    for (profile, rules) in super::rules_by_profile(snap) {
        let (on, off) = (names(&rules.running), names(&rules.off));
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(profile),
            on.join(", "),
            if off.is_empty() {
                "-".to_string()
            } else {
                off.join(", ")
            }
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;
