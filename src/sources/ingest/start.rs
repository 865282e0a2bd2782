//! `records.ingest` behind the records sources' seam: one API for every profile that takes
//! pushed records, each profile's source unsynced until its first snapshot.

use tracing::info;

use crate::core::engine::Change;
use crate::model::profile::ProfileId;
use crate::model::source::SourceKind;
use crate::sources::records::{RecordsSource, Start};
use crate::util::config::Validator;

use super::{Ingest, IngestSettings, SOURCE, config};

/// Why the ingest API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "a profile takes records from the ingest API (records.ingest), but no token is configured: give --ingest-token-file"
    )]
    NoToken,
}

impl RecordsSource for Ingest {
    const NAME: &'static str = SOURCE;
    const KIND: SourceKind = SourceKind::Push;
    type Spec = config::Spec;
    type Settings = IngestSettings;
    type Error = StartError;

    fn validate(spec: config::Spec, v: &mut Validator<'_>) -> IngestSettings {
        spec.validate(v)
    }

    fn start(
        profiles: Vec<(ProfileId, IngestSettings)>,
        cx: &mut Start<'_>,
    ) -> Result<(), StartError> {
        let token = cx.options.ingest_token.take().ok_or(StartError::NoToken)?;
        let ingest = Ingest::new(
            cx.profiles.clone(),
            profiles.into_iter().collect(),
            cx.changes.clone(),
            token,
            (cx.options.ingest_max_body, cx.options.ingest_body_timeout),
            cx.counters.clone(),
        );
        for status in ingest.statuses() {
            if let Change::Source(s) = &status {
                cx.register(&s.name);
            }
            cx.announce(status);
        }
        cx.route(ingest.clone().router());
        let stop = cx.stop();
        cx.spawn(ingest.run(stop));
        info!("accepting records at POST /api/v1/records");
        Ok(())
    }
}
