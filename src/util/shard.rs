//! Sharding, the way kube-state-metrics does it: with `--total-shards N --shard I`, a replica
//! keeps only the pods and records whose *session key* hashes to shard I, so that a session,
//! its pods and its executions always land on the same shard and N shards together cover
//! everything exactly once. Every shard still watches and lists everything; each keeps (and
//! judges, and remediates) its 1/N.
//!
//! The session key: a pod's session id (its profile's `session_key`), else its name; a
//! session's id; an execution's session, else its sandbox; a sandbox's id. Resume targets,
//! and executions that name neither a session nor a sandbox, are kept by every shard (the
//! World never takes the absence of such an execution's pod as evidence when sharded).

use sha2::{Digest, Sha256};

/// A shard setting that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("--total-shards must be at least 1")]
    NoShards,
    #[error("--shard {index} is not below --total-shards {total} (shards count from 0)")]
    OutOfRange { index: u32, total: u32 },
    #[error("{0:?} does not end in a StatefulSet ordinal (-0, -1, ...)")]
    NoOrdinal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
}

impl Shard {
    /// No sharding: one shard owns everything.
    pub const ALL: Shard = Shard { index: 0, total: 1 };

    pub fn new(index: u32, total: u32) -> Result<Shard, ShardError> {
        if total == 0 {
            return Err(ShardError::NoShards);
        }
        if index >= total {
            return Err(ShardError::OutOfRange { index, total });
        }
        Ok(Shard { index, total })
    }

    /// The shard a StatefulSet pod serves: the ordinal at the end of its name (`sandwatch-2`).
    pub fn ordinal(pod_name: &str) -> Result<u32, ShardError> {
        pod_name
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ShardError::NoOrdinal(pod_name.to_string()))
    }

    /// Whether this shard keeps what has this session key. The hash is fixed (SHA-256), so
    /// every replica and every version agrees.
    pub fn owns(&self, key: &str) -> bool {
        if self.total <= 1 {
            return true;
        }
        let digest = Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % u64::from(self.total) == u64::from(self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_exactly_one_shard_and_keys_spread() {
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).unwrap()).collect();
        let mut counts = [0; 3];
        for i in 0..3000 {
            let key = format!("slack:C0:{i}");
            let owners: Vec<usize> = (0..3).filter(|s| shards[*s].owns(&key)).collect();
            assert_eq!(owners.len(), 1, "{key}");
            counts[owners[0]] += 1;
        }
        assert!(counts.iter().all(|c| *c > 850), "{counts:?}");
        assert!(Shard::ALL.owns("anything"));
        assert_eq!(Shard::ordinal("sandwatch-2"), Ok(2));
        assert!(Shard::ordinal("sandwatch").is_err());
        assert!(Shard::new(3, 3).is_err());
    }
}
