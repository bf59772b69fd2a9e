//! Identifiers: who a message is for, which client of theirs, which message.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest client id or message id the protocol accepts.
pub const MAX_ID_LEN: usize = 64;

/// A user, as named by the application's identity function.
///
/// Any string works (a database id, an email, a UUID). It is never read from a request:
/// only the identity function produces it, which is what keeps users apart.
///
/// ```
/// use simpleio::UserId;
/// let ann = UserId::from("ann");
/// assert_eq!(ann.as_str(), "ann");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        UserId(s.into())
    }
}

impl From<String> for UserId {
    fn from(s: String) -> Self {
        UserId(s.into())
    }
}

impl From<&String> for UserId {
    fn from(s: &String) -> Self {
        UserId(s.as_str().into())
    }
}

impl From<&UserId> for UserId {
    fn from(u: &UserId) -> Self {
        u.clone()
    }
}

/// Why a string is not a valid client id or message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The id is empty.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    /// The id has a character outside `A-Z a-z 0-9 _ -`.
    #[error("may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter,
}

fn validate(s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(InvalidId::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(InvalidId::BadCharacter);
    }
    Ok(())
}

macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks `s` against the protocol's rules: 1 to 64 characters of `A-Z a-z 0-9 _ -`.
            pub fn new(s: impl AsRef<str>) -> Result<Self, InvalidId> {
                let s = s.as_ref();
                validate(s)?;
                Ok($name(s.into()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

checked_id! {
    /// One running client of a user (a browser tab, a process), chosen by the client.
    ///
    /// It is scoped to the user the identity function names: the same client id under two users
    /// is two unrelated clients.
    ///
    /// ```
    /// use simpleio::ClientId;
    /// assert!(ClientId::new("tab-3f9a1c").is_ok());
    /// assert!(ClientId::new("no spaces").is_err());
    /// ```
    ClientId
}

checked_id! {
    /// A client's id for one message it sends, the key of exactly-once handling.
    ///
    /// ```
    /// use simpleio::MessageId;
    /// assert!(MessageId::new("tab-3f9a1c-17").is_ok());
    /// ```
    MessageId
}

impl ClientId {
    /// A fresh random client id (22 characters), for clients written in Rust.
    pub fn random() -> Self {
        ClientId(random_token(22).into())
    }
}

/// A random string of `len` characters from the id alphabet.
pub(crate) fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_protocol_alphabet() {
        assert_eq!(ClientId::new(""), Err(InvalidId::Empty));
        assert_eq!(ClientId::new("a".repeat(65)), Err(InvalidId::TooLong));
        assert!(ClientId::new("a".repeat(64)).is_ok());
        assert_eq!(MessageId::new("a/b"), Err(InvalidId::BadCharacter));
        assert_eq!(MessageId::new("é"), Err(InvalidId::BadCharacter));
        assert!(ClientId::new(ClientId::random().as_str()).is_ok());
    }

    #[test]
    fn deserializing_checks_the_id() {
        assert!(serde_json::from_str::<ClientId>("\"ok_id-1\"").is_ok());
        assert!(serde_json::from_str::<ClientId>("\"bad id\"").is_err());
    }
}
