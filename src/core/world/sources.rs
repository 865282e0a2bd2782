//! The sources that feed the World, as the World sees them: what each source sees (which
//! feeds, for which profile, in which namespace), whether it is synced and fresh, and since
//! when it has been trusted. A missing pod or record is only evidence when the source that
//! would show it is trusted and sees where it would be; these are the questions the rules
//! ask about that.

use crate::model::profile::ProfileId;
use crate::util::time::Ts;

use super::{Blind, Feed, Holder, SourceStatus, Trust, World, trust};

impl World {
    /// Records a source's status at `at`; returns whether it changed anything a verdict rests
    /// on (then every subject is judged again).
    pub fn set_source(&mut self, status: SourceStatus, at: Ts) -> bool {
        // Everything but the error message bears on what is trusted and where an absence
        // counts: a source that starts, or widens what a profile sees, re-judges as much as
        // one that fails.
        let judged = |s: &SourceStatus| {
            (
                s.profile,
                s.feeds.clone(),
                s.namespace.clone(),
                s.synced,
                s.fresh,
            )
        };
        self.trusted_since.update(&status, at);
        match self.sources.iter_mut().find(|s| s.name == status.name) {
            Some(s) => {
                let changed = judged(s) != judged(&status);
                *s = status;
                changed
            }
            None => {
                self.sources.push(status);
                true
            }
        }
    }

    pub fn sources(&self) -> &[SourceStatus] {
        &self.sources
    }

    /// How far a profile can rely on a feed, from the sources that provide it to that profile.
    pub fn trust(&self, profile: ProfileId, feed: Feed) -> Trust {
        trust(&self.sources, profile, feed)
    }

    /// Whether a missing pod or record is evidence (see [`crate::model::source::absence`]).
    pub fn absence(
        &self,
        profile: ProfileId,
        feed: Feed,
        namespace: Option<&str>,
        holder: Holder<'_>,
    ) -> Result<(), Blind> {
        crate::model::source::absence(&self.sources, self.shard, profile, feed, namespace, holder)
    }

    /// Since when every source of these feeds for `profile` has been trusted without a break.
    pub fn trusted_since(&self, profile: ProfileId, feeds: &[Feed]) -> Option<Ts> {
        self.trusted_since
            .of(&self.sources, profile, feeds.iter().copied())
    }
}
