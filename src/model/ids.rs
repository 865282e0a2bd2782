//! The identifiers every layer shares: shared strings, pod uids, profile indexes, record kinds
//! and keys, and the subjects findings are about. Plain data, no dependencies.

use std::sync::Arc;

/// A shared, immutable string.
pub type Sym = Arc<str>;

/// Index of a profile in `Profiles`; small, so the per-pod projection stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProfileId(pub u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Session,
    Execution,
    Sandbox,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Session => "session",
            RecordKind::Execution => "execution",
            RecordKind::Sandbox => "sandbox",
        }
    }

    pub fn parse(s: &str) -> Option<RecordKind> {
        match s {
            "session" => Some(RecordKind::Session),
            "execution" => Some(RecordKind::Execution),
            "sandbox" => Some(RecordKind::Sandbox),
            _ => None,
        }
    }
}

/// A pod's uid: kept as 16 bytes when it is a UUID (as the API server makes them), as text
/// otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Uid {
    Uuid([u8; 16]),
    Text(Sym),
}

impl Uid {
    pub fn parse(text: &str) -> Uid {
        let b = text.as_bytes();
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        if b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') {
            let mut out = [0u8; 16];
            // 32 digits unless a dash stands elsewhere too, which leaves too few.
            let mut digits = b.iter().filter(|c| **c != b'-').map(|c| digit(*c));
            if out
                .iter_mut()
                .all(|o| match (digits.next(), digits.next()) {
                    (Some(Some(h)), Some(Some(l))) => {
                        *o = h * 16 + l;
                        true
                    }
                    _ => false,
                })
            {
                return Uid::Uuid(out);
            }
        }
        Uid::Text(Sym::from(text))
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Text(t) => f.write_str(t),
            Uid::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Identifies a record: kind, profile, namespace (only for kinds whose ids are unique per
/// namespace) and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub kind: RecordKind,
    pub profile: ProfileId,
    pub namespace: Option<Sym>,
    pub id: Sym,
}

/// Something a rule can judge: a pod (by uid, so a re-created pod is a new subject) or a record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Pod { namespace: Sym, name: Sym, uid: Uid },
    Record(RecordKey),
}

/// A pod hashes by its uid alone (equal pods have equal uids): 16 bytes instead of two names.
impl std::hash::Hash for Subject {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            Subject::Pod { uid, .. } => {
                h.write_u8(0);
                uid.hash(h);
            }
            Subject::Record(k) => {
                h.write_u8(1);
                k.hash(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Uid;

    #[test]
    fn uuids_are_kept_as_bytes_and_print_back() {
        let text = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
        let uid = Uid::parse(text);
        assert!(matches!(uid, Uid::Uuid(_)));
        assert_eq!(uid.to_string(), text);
        for other in [
            "uid-1",
            "5F0C1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B",
            "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5z",
            "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4-5b",
        ] {
            assert_eq!(Uid::parse(other), Uid::Text(other.into()));
            assert_eq!(Uid::parse(other).to_string(), other);
        }
    }
}
