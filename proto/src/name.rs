//! User names: the one identifier users type, so the rules are strict and the errors precise.

use std::fmt;

use crate::limits::{MAX_NAME_LEN, MIN_NAME_LEN};

/// A valid, case-folded user name: 3–32 characters of `a-z 0-9 . _ -`, starting with a letter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

/// Why a string is not a valid user name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("user name is too short: {len} characters, at least {MIN_NAME_LEN} needed")]
    TooShort { len: usize },
    #[error("user name is too long: {len} characters, at most {MAX_NAME_LEN} allowed")]
    TooLong { len: usize },
    #[error("user name must start with a letter, not {found:?}")]
    BadStart { found: char },
    #[error(
        "user name may only contain a-z, 0-9, '.', '_' and '-': {found:?} at position {position}"
    )]
    BadChar { found: char, position: usize },
    #[error("user name is not in canonical (lower-case) form")]
    NotCanonical,
}

impl UserName {
    /// Parses what a user typed: surrounding whitespace is an error, upper case is folded.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let len = input.chars().count();
        if len < MIN_NAME_LEN {
            return Err(NameError::TooShort { len });
        }
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong { len });
        }
        let folded = input.to_ascii_lowercase();
        for (position, found) in folded.chars().enumerate() {
            let ok = found.is_ascii_lowercase()
                || (position > 0 && (found.is_ascii_digit() || matches!(found, '.' | '_' | '-')));
            if !ok {
                return Err(if position == 0 {
                    NameError::BadStart { found }
                } else {
                    NameError::BadChar { found, position }
                });
            }
        }
        Ok(Self(folded))
    }

    /// Parses a name that must already be canonical, as in signed encodings, where two byte
    /// strings must never denote the same name.
    pub fn parse_canonical(input: &str) -> Result<Self, NameError> {
        let name = Self::parse(input)?;
        if name.0 != input {
            return Err(NameError::NotCanonical);
        }
        Ok(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserName({:?})", self.0)
    }
}

impl std::str::FromStr for UserName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for UserName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for UserName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_canonical(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_folds() {
        assert_eq!(UserName::parse("Alice").unwrap().as_str(), "alice");
        assert_eq!(UserName::parse("a.b_c-9").unwrap().as_str(), "a.b_c-9");
        assert_eq!(UserName::parse(&"a".repeat(32)).unwrap().as_str().len(), 32);
    }

    #[test]
    fn says_what_is_wrong() {
        assert_eq!(UserName::parse("ab"), Err(NameError::TooShort { len: 2 }));
        assert_eq!(
            UserName::parse(&"a".repeat(33)),
            Err(NameError::TooLong { len: 33 })
        );
        assert_eq!(
            UserName::parse("9lives"),
            Err(NameError::BadStart { found: '9' })
        );
        assert_eq!(
            UserName::parse("_bob"),
            Err(NameError::BadStart { found: '_' })
        );
        assert_eq!(
            UserName::parse("bo b"),
            Err(NameError::BadChar {
                found: ' ',
                position: 2
            })
        );
        assert_eq!(
            UserName::parse("bøb"),
            Err(NameError::BadChar {
                found: 'ø',
                position: 1
            })
        );
        assert_eq!(
            UserName::parse_canonical("Bob"),
            Err(NameError::NotCanonical)
        );
    }

    #[test]
    fn multibyte_length_counts_characters() {
        // Four characters, eight bytes: a length error must not hide the character error.
        assert!(matches!(
            UserName::parse("aééé"),
            Err(NameError::BadChar { position: 1, .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_valid_names_are_canonical(s in "\\PC{0,40}") {
            if let Ok(name) = UserName::parse(&s) {
                prop_assert!(UserName::parse_canonical(name.as_str()).is_ok());
                prop_assert_eq!(name.as_str(), s.to_ascii_lowercase());
            }
        }

        #[test]
        fn valid_pattern_always_parses(s in "[a-z][a-z0-9._-]{2,31}") {
            let name = UserName::parse(&s).unwrap();
            prop_assert_eq!(name.as_str(), s.as_str());
        }
    }
}
