//! A source's full list in the World: when a source finishes listing everything it sees, the
//! pods, records and resume targets it no longer lists vanished while nobody was watching, and
//! they go as if the source had said so.

use crate::model::profile::ProfileId;
use crate::model::record::RecordKind;
use crate::util::time::Ts;

use super::{Feed, RecordKey, Subject, Sym, World};

impl World {
    /// After a source's full list: removes what it no longer lists within its scope (the
    /// pods, records of one kind, or resume targets of a profile, in one namespace or all),
    /// because those vanished while nobody was watching. `listed` holds (namespace, name) of
    /// every object listed; records without a namespace are listed as ("", id), and records
    /// whose ids are unique per profile are matched by id alone.
    pub fn retain_listed(
        &mut self,
        feed: Feed,
        profile: ProfileId,
        namespace: Option<&str>,
        listed: &std::collections::HashSet<(String, String)>,
        at: Ts,
        touched: &mut Vec<Subject>,
    ) {
        let in_scope = |ns: &str| namespace.is_none_or(|n| n == ns);
        let missing = |ns: &str, name: &str| !listed.contains(&(ns.to_string(), name.to_string()));
        let kind = match feed {
            Feed::Pods => {
                let gone: Vec<(Sym, Sym)> = self
                    .pods()
                    .filter(|p| p.profile == profile && in_scope(&p.namespace))
                    .filter(|p| missing(&p.namespace, &p.name))
                    .map(|p| (p.namespace.clone(), p.name.clone()))
                    .collect();
                for (ns, name) in gone {
                    self.delete_pod(&ns, &name, None, at, touched);
                }
                return;
            }
            Feed::ResumeTargets => {
                let gone: Vec<(Sym, Sym)> = self
                    .resume_targets
                    .iter()
                    .filter(|((p, _), _)| *p == profile)
                    .flat_map(|((_, name), nss)| {
                        nss.iter().map(move |ns| (ns.clone(), name.clone()))
                    })
                    .filter(|(ns, name)| in_scope(ns) && missing(ns, name))
                    .collect();
                for (ns, name) in gone {
                    self.set_resume_target(profile, &ns, &name, false, at, touched);
                }
                return;
            }
            Feed::Sessions => RecordKind::Session,
            Feed::Executions => RecordKind::Execution,
            Feed::Sandboxes => RecordKind::Sandbox,
        };
        let ids: std::collections::HashSet<&str> =
            listed.iter().map(|(_, id)| id.as_str()).collect();
        // A listed record that names no namespace is placed as upserts place it: in the
        // profile's default namespace.
        let default = self.profiles.get(profile).records.default_namespace.clone();
        let placed: std::collections::HashSet<(&str, &str)> = listed
            .iter()
            .map(|(ns, id)| {
                let ns = if ns.is_empty() {
                    default.as_deref().unwrap_or("")
                } else {
                    ns.as_str()
                };
                (ns, id.as_str())
            })
            .collect();
        let gone: Vec<RecordKey> = self
            .records
            .keys()
            .filter(|k| k.kind == kind && k.profile == profile)
            .filter(|k| match &k.namespace {
                Some(ns) => in_scope(ns) && !placed.contains(&(&**ns, &*k.id)),
                None => !ids.contains(&*k.id),
            })
            .cloned()
            .collect();
        for k in gone {
            self.remove_record(&k, at, touched);
        }
    }
}
