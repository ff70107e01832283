//! Object names under a dataset's prefix. Numbers are zero-padded to 20
//! digits so that names sort by version.

use std::fmt;

/// The name of one object of a dataset, relative to its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobName {
    /// `snapshot/<version>`
    Snapshot(u64),
    /// `delta/<from>-<to>`
    Delta(u64, u64),
    /// `reverse/<from>-<to>`: moves a consumer from `from` back to `to`.
    Reverse(u64, u64),
    /// `announce/<seq>`
    Announce(u64),
    /// `announce/latest`: the best-effort hint naming the newest seq.
    Latest,
}

impl fmt::Display for BlobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobName::Snapshot(v) => write!(f, "snapshot/{v:020}"),
            BlobName::Delta(a, b) => write!(f, "delta/{a:020}-{b:020}"),
            BlobName::Reverse(a, b) => write!(f, "reverse/{a:020}-{b:020}"),
            BlobName::Announce(s) => write!(f, "announce/{s:020}"),
            BlobName::Latest => write!(f, "announce/latest"),
        }
    }
}

impl BlobName {
    /// Parses a name relative to the dataset prefix; `None` if it is not one
    /// of burrow's names.
    pub fn parse(name: &str) -> Option<Self> {
        let num = |s: &str| -> Option<u64> {
            if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok()
            } else {
                None
            }
        };
        let pair = |s: &str| -> Option<(u64, u64)> {
            let (a, b) = s.split_once('-')?;
            Some((num(a)?, num(b)?))
        };
        let (dir, rest) = name.split_once('/')?;
        match dir {
            "snapshot" => Some(BlobName::Snapshot(num(rest)?)),
            "delta" => pair(rest).map(|(a, b)| BlobName::Delta(a, b)),
            "reverse" => pair(rest).map(|(a, b)| BlobName::Reverse(a, b)),
            "announce" if rest == "latest" => Some(BlobName::Latest),
            "announce" => Some(BlobName::Announce(num(rest)?)),
            _ => None,
        }
    }

    /// The file name used for this blob inside a local cache directory.
    pub fn cache_file_name(&self) -> String {
        self.to_string().replace('/', "-")
    }

    /// The blob a cache file holds, from its file name (the inverse of
    /// [`BlobName::cache_file_name`]); `None` for any other file.
    pub fn from_cache_file_name(file: &str) -> Option<Self> {
        BlobName::parse(&file.replacen('-', "/", 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_version() {
        let names = [
            BlobName::Snapshot(9),
            BlobName::Snapshot(10),
            BlobName::Delta(9, 10),
            BlobName::Reverse(10, 9),
            BlobName::Announce(12),
            BlobName::Latest,
        ];
        for n in names {
            assert_eq!(BlobName::parse(&n.to_string()), Some(n), "{n}");
        }
        assert!(BlobName::Snapshot(9).to_string() < BlobName::Snapshot(10).to_string());
        for n in names {
            assert_eq!(
                BlobName::from_cache_file_name(&n.cache_file_name()),
                Some(n)
            );
        }
        assert_eq!(BlobName::from_cache_file_name("snapshot-1.tmp-ab"), None);
        assert_eq!(BlobName::parse("snapshot/12"), None);
        assert_eq!(BlobName::parse("other/00000000000000000001"), None);
    }
}
