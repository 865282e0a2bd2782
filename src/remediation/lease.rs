//! Leader election on a `coordination.k8s.io/v1` Lease, so that with several replicas only
//! one remediates while all serve metrics.
//!
//! client-go's LeaseLock pattern: GET the Lease; create it if missing; otherwise PUT it back
//! with the resourceVersion just read (the API server answers 409 to a stale one), renewing
//! when we hold it, taking it over when its holder has not renewed for `duration`. Expiry is
//! judged by when *this* replica last saw the Lease change, never by the timestamps in it, so
//! clock skew between replicas cannot make two leaders.
//!
//! Why two replicas never act at once: the holder acts only until `renew_deadline` (10 s)
//! after its last successful renewal began, and stops taking new calls when less than a call
//! timeout remains. Another replica takes over only after seeing no change for `duration`
//! (15 s) since that renewal's write, which is later than the holder's deadline.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// What this replica may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub leader: bool,
    /// Without a Lease (leader election off), `None`: always allowed.
    pub until: Option<Instant>,
}

impl Leadership {
    pub const ALWAYS: Leadership = Leadership {
        leader: true,
        until: None,
    };

    /// Whether a call taking up to `margin` may start now.
    pub fn acting(&self, now: Instant, margin: Duration) -> bool {
        self.leader && self.until.is_none_or(|u| now + margin < u)
    }
}

#[derive(Clone, Debug)]
pub struct Elector {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Elector {
    pub fn new(name: &str, namespace: &str, identity: &str) -> Elector {
        Elector {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Competes for the Lease until `stop`, publishing leadership; releases it on the way out.
    pub async fn run(
        self,
        client: kube::Client,
        tx: watch::Sender<Leadership>,
        mut stop: watch::Receiver<bool>,
        errors: prometheus_client::metrics::counter::Counter,
    ) {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut observed: Option<(String, Instant)> = None;
        let mut leading_since_renew: Option<Instant> = None;
        loop {
            let attempt = Instant::now();
            // A call that does not answer (packets dropped on the way to the API server) is
            // given up on: after half the renew deadline, or at once on shutdown.
            let step =
                tokio::time::timeout(self.renew_deadline / 2, self.step(&api, &mut observed));
            let result = tokio::select! {
                r = step => r.unwrap_or_else(|_| Err(kube::Error::Service("the Lease call timed out".into()))),
                _ = stopped(&mut stop) => {
                    tx.send_replace(Leadership { leader: false, until: None });
                    if leading_since_renew.is_some() {
                        self.release_within(&api).await;
                    }
                    return;
                }
            };
            match result {
                Ok(true) => {
                    if leading_since_renew.is_none() {
                        info!(lease = %self.name, identity = %self.identity, "acquired the remediation lease: this replica remediates");
                    }
                    leading_since_renew = Some(attempt);
                }
                Ok(false) => {
                    if leading_since_renew.take().is_some() {
                        warn!(lease = %self.name, "lost the remediation lease");
                    }
                }
                Err(e) => {
                    errors.inc();
                    warn!(lease = %self.name, error = %e, "lease update failed");
                }
            }
            let leadership = match leading_since_renew {
                Some(t) if attempt.duration_since(t) < self.renew_deadline => Leadership {
                    leader: true,
                    until: Some(t + self.renew_deadline),
                },
                _ => Leadership {
                    leader: false,
                    until: None,
                },
            };
            tx.send_replace(leadership);
            let stopping = tokio::select! {
                _ = tokio::time::sleep(self.retry_period) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                tx.send_replace(Leadership {
                    leader: false,
                    until: None,
                });
                if leading_since_renew.is_some() {
                    self.release_within(&api).await;
                }
                return;
            }
        }
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    /// One round: true if we hold the Lease after it.
    async fn step(
        &self,
        api: &Api<Lease>,
        observed: &mut Option<(String, Instant)>,
    ) -> Result<bool, kube::Error> {
        let got = api.get_opt(&self.name).await?;
        // When this replica learnt of the Lease's current version: after the GET answered (a
        // renewal may have been written while it was under way).
        let now = Instant::now();
        let Some(mut lease) = got else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration.as_secs() as i32),
                    acquire_time: Some(Self::now()),
                    renew_time: Some(Self::now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let seen_at = match observed {
            Some((old, at)) if *old == rv => *at,
            _ => {
                *observed = Some((rv.clone(), now));
                now
            }
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(1) as u64));
        let ours = holder == self.identity;
        let expired = holder.is_empty() || now.duration_since(seen_at) >= duration;
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(Self::now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.lease_duration_seconds = Some(self.duration.as_secs() as i32);
        }
        spec.renew_time = Some(Self::now());
        // PUT with the resourceVersion just read: a concurrent writer makes this a 409.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                *observed = updated
                    .metadata
                    .resource_version
                    .map(|rv| (rv, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Self::release`], given up after a couple of seconds: the Lease then expires by
    /// itself, and shutdown is not held up by an API server that does not answer.
    async fn release_within(&self, api: &Api<Lease>) {
        if tokio::time::timeout(Duration::from_secs(2), self.release(api))
            .await
            .is_err()
        {
            warn!(lease = %self.name, "the API server did not answer the Lease release in time; the Lease expires by itself");
        }
    }

    /// Gives the Lease up on shutdown so that another replica takes over at once.
    async fn release(&self, api: &Api<Lease>) {
        let Ok(Some(mut lease)) = api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(Self::now());
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the remediation lease"),
            Err(e) => {
                warn!(lease = %self.name, error = %e, "could not release the lease; it expires by itself")
            }
        }
    }
}

/// Resolves once `stop` is set (and holds no borrow of it afterwards).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
