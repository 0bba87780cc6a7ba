//! Validated identifiers. An `AppId` is the only thing from a request that ever becomes part of a path,
//! and it can only be built through [`AppId::parse`], which admits `[A-Za-z0-9._-]{1,128}` minus `.` and
//! `..`.

use crate::error::{Result, StoreError};
use std::fmt;

/// Longest accepted app id, in bytes.
pub const APP_ID_LEN_MAX: usize = 128;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AppId(String);

impl AppId {
    pub fn parse(raw: &str) -> Result<AppId> {
        if raw.is_empty() {
            return Err(StoreError::invalid("app_id", "must not be empty"));
        }
        if raw.len() > APP_ID_LEN_MAX {
            return Err(StoreError::invalid(
                "app_id",
                format!(
                    "is {} bytes long, at most {APP_ID_LEN_MAX} are allowed",
                    raw.len()
                ),
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(StoreError::invalid(
                "app_id",
                format!("{raw:?} contains {bad:?}; allowed are A-Z a-z 0-9 . _ -"),
            ));
        }
        if raw == "." || raw == ".." {
            return Err(StoreError::invalid(
                "app_id",
                format!("{raw:?} is reserved"),
            ));
        }
        Ok(AppId(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An (app, shuffle) pair: the unit of storage placement and deletion.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ShuffleKey {
    pub app: AppId,
    pub shuffle_id: u32,
}

impl fmt::Display for ShuffleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "app {} shuffle {}", self.app, self.shuffle_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_that_could_escape_a_directory_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\0b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(AppId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["app-1", "spark.app_20261130.0001", "...", &"x".repeat(128)] {
            assert_eq!(AppId::parse(good).unwrap().as_str(), good);
        }
    }
}
