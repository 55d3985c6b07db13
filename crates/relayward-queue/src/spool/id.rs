//! Queue ids: time-ordered, unique per process, safe as file names.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::SpoolError;

/// Crockford base32, upper case. In ASCII order, so ids sort by their time prefix.
pub(super) const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of a [`QueueId`] in characters.
pub const QUEUE_ID_LEN: usize = 16;
/// 11 base32 characters = 55 bits of microseconds since the epoch (good until the year 3111).
const TIME_CHARS: usize = 11;
const RANDOM_CHARS: usize = QUEUE_ID_LEN - TIME_CHARS;
// The random part is drawn from one u32.
const _: () = assert!(RANDOM_CHARS * 5 <= 32);

/// A message's id in the spool: 16 characters of Crockford base32, 11 of them the time of creation
/// in microseconds, 5 random. Sorting ids sorts messages by age.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId([u8; QUEUE_ID_LEN]);

/// Last time component handed out in this process; ids are strictly increasing per process, so two
/// threads can never collide, and the random part separates processes and clock steps backwards.
static LAST_MICROS: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    /// A fresh id, unique in this process by construction and across processes by 25 random bits.
    pub fn generate() -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut last = LAST_MICROS.load(Ordering::Relaxed);
        let micros = loop {
            let next = now.max(last + 1);
            match LAST_MICROS.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(actual) => last = actual,
            }
        };
        let random: u32 = rand::random();
        let mut bytes = [0u8; QUEUE_ID_LEN];
        for (i, b) in bytes[..TIME_CHARS].iter_mut().rev().enumerate() {
            *b = ALPHABET[((micros >> (5 * i)) & 31) as usize];
        }
        for (i, b) in bytes[TIME_CHARS..].iter_mut().rev().enumerate() {
            *b = ALPHABET[((random >> (5 * i)) & 31) as usize];
        }
        QueueId(bytes)
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from ALPHABET.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Creation time in microseconds since the Unix epoch.
    pub fn timestamp_micros(&self) -> u64 {
        self.0[..TIME_CHARS].iter().fold(0u64, |acc, &c| {
            (acc << 5) | decode_char(c).unwrap_or(0) as u64
        })
    }

    pub(super) fn shard(&self) -> &str {
        &self.as_str()[QUEUE_ID_LEN - 1..]
    }
}

fn decode_char(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

impl FromStr for QueueId {
    type Err = SpoolError;

    /// Accepts lower case (ids get typed into the CLI); rejects anything that could be a path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SpoolError::InvalidQueueId(s.to_string());
        let raw = s.as_bytes();
        if raw.len() != QUEUE_ID_LEN {
            return Err(bad());
        }
        let mut bytes = [0u8; QUEUE_ID_LEN];
        for (b, &c) in bytes.iter_mut().zip(raw) {
            let c = c.to_ascii_uppercase();
            decode_char(c).ok_or_else(bad)?;
            *b = c;
        }
        Ok(QueueId(bytes))
    }
}

impl TryFrom<&str> for QueueId {
    type Error = SpoolError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for QueueId {
    type Error = SpoolError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.as_str().to_string()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({})", self.as_str())
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_id_parsing() {
        let id = QueueId::generate();
        assert_eq!(id.as_str().to_lowercase().parse::<QueueId>().unwrap(), id);
        assert_eq!(QueueId::try_from(String::from(id)).unwrap(), id);
        assert!(QueueId::try_from("nope").is_err());
        for bad in [
            "",
            "01HZY3V5K8Q2W7X",
            "01HZY3V5K8Q2W7XAB",
            "01HZY3V5K8Q2W7XI",
            "../../etc/passwd",
            "01HZY3V5K8Q2W7X/",
            "01HZY3V5K8Q2W7XÄ",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<QueueId>("\"../../etc/passwd\"").is_err());
    }
}
