//! The one trust verdict: whether the sources a rule rests on let it judge now. The engine
//! asks it before each judgement (judge, hold, or do not run), and remediation asks it again
//! before each call on a finding (act, or wait), so the two can never disagree.

use crate::core::rules::{self, Needs};
use crate::model::finding::Finding;
use crate::model::profile::ProfileId;
use crate::model::source::{self, Holder, SourceStatus, Trust};
use crate::util::shard::Shard;

/// What the sources let a rule do for one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A feed the rule requires has no source for this profile: the rule does not run.
    Off,
    /// A feed it rests on is unsynced or stale: its findings hold as they are.
    Held,
    /// Every feed it rests on is synced and fresh: it judges.
    Judges,
}

/// The verdict for a rule with these needs, from the sources' status now.
pub fn verdict(sources: &[SourceStatus], profile: ProfileId, needs: &Needs) -> Verdict {
    let trust = |feed: &source::Feed| source::trust(sources, profile, *feed);
    if needs
        .required
        .iter()
        .any(|f| trust(f) == Trust::Unconfigured)
    {
        return Verdict::Off;
    }
    if needs
        .required
        .iter()
        .chain(needs.optional)
        .any(|f| trust(f) == Trust::Untrusted)
    {
        return Verdict::Held;
    }
    Verdict::Judges
}

/// Whether an open finding may be acted on now: its rule judges (every source it rests on is
/// synced and fresh), and, for a finding that rests on something missing, that absence is
/// still evidence where the finding is ([`source::absence`], the check the rules make).
pub fn may_act(sources: &[SourceStatus], profile: ProfileId, finding: &Finding) -> bool {
    let Some(rule) = rules::ALL.iter().find(|r| r.kind() == finding.kind) else {
        return false;
    };
    if verdict(sources, profile, &rule.needs()) != Verdict::Judges {
        return false;
    }
    rule.rests_on_absence(&finding.reason).is_none_or(|feed| {
        source::absence(
            sources,
            Shard::ALL,
            profile,
            feed,
            finding.namespace.as_deref(),
            Holder::Everywhere,
        )
        .is_ok()
    })
}
