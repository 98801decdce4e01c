use std::fmt;

use serde::{Deserialize, Serialize};

/// An ad, campaign or screen identifier: 1..64 characters of
/// `[A-Za-z0-9_.:-]`. The charset keeps identifiers safe inside Redis key
/// names, where `:` separates parts and braces would break the hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ident(String);

impl Ident {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Self, &'static str> {
        if value.is_empty() {
            return Err("must not be empty");
        }
        if value.len() > Self::MAX_LEN {
            return Err("must be at most 64 characters");
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            return Err("may contain only letters, digits and _ . : -");
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Ident {
    type Error = &'static str;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Ident> for String {
    fn from(value: Ident) -> Self {
        value.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Ident {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_charset_and_rejects_the_rest() {
        assert!(Ident::parse("11111111-1111-1111-1111-111111111111").is_ok());
        assert!(Ident::parse("ad_1.v2:eu").is_ok());
        assert!(Ident::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a{b}", "ad/1", "é", "a\0b", &"a".repeat(65)] {
            assert!(Ident::parse(bad).is_err(), "{bad:?}");
        }
    }
}
