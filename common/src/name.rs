//! File names that cross the wire: what a receiver accepts, and how to print one safely.

use std::fmt;

/// Longest name in bytes (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Prefix of the receiver's temporary files; senders may not use it.
pub const TEMP_PREFIX: &str = ".zrecv-";

/// Why a name is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Zero bytes long.
    #[error("name is empty")]
    Empty,
    /// `.` or `..`.
    #[error("name {0:?} refers to a directory")]
    Dot(String),
    /// Contains a `/`.
    #[error("name {} contains '/'; it must be a single path component", Escaped(.0))]
    Slash(String),
    /// Contains NUL or another control character.
    #[error("name {} contains a control character", Escaped(.0))]
    Control(String),
    /// Longer than 255 bytes.
    #[error("name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// Not UTF-8.
    #[error("name is not valid UTF-8 (use --name)")]
    NotUtf8,
    /// Starts with the receiver's temporary-file prefix.
    #[error("name {} uses the reserved prefix {TEMP_PREFIX}", Escaped(.0))]
    Reserved(String),
}

/// Checks that `name` is one safe path component: not empty, not `.` or `..`, no `/`, no NUL or
/// control characters, at most 255 bytes, and not one of the receiver's temporary names.
/// Names such as `..cache` or `a..b` are fine.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Dot(name.into()));
    }
    if name.contains('/') {
        return Err(NameError::Slash(name.into()));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control(name.into()));
    }
    if name.starts_with(TEMP_PREFIX) {
        return Err(NameError::Reserved(name.into()));
    }
    Ok(())
}

/// Checks that `name` is one path component of a tree: as Linux allows it (not empty, not `.`
/// or `..`, no `/` or NUL, at most 255 bytes), any other bytes included (control characters,
/// bytes that are not UTF-8), but not one of the receiver's temporary names.
pub fn validate_component(name: &[u8]) -> Result<(), NameError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dot(shown()));
    }
    if name.contains(&b'/') {
        return Err(NameError::Slash(shown()));
    }
    if name.contains(&0) {
        return Err(NameError::Control(shown()));
    }
    if name.starts_with(TEMP_PREFIX.as_bytes()) {
        return Err(NameError::Reserved(shown()));
    }
    Ok(())
}

/// A tree's top-level name as the name its hello announces (one UTF-8 component without
/// control characters): other bytes and control characters become `_`.
pub fn label_of(name: &[u8]) -> String {
    let label: String = String::from_utf8_lossy(name)
        .chars()
        .map(
            |c| match c.is_control() || c == char::REPLACEMENT_CHARACTER {
                true => '_',
                false => c,
            },
        )
        .collect();
    match validate_name(&label) {
        Ok(()) => label,
        Err(_) => "tree".into(),
    }
}

/// A name of bytes as a `String` that no other name gives: the name itself when it is UTF-8,
/// else a NUL (which no name holds) and its bytes in hex. For keys that must be text.
pub fn text_key(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("\0{}", hex::encode(name)),
    }
}

/// Displays a peer-supplied name or text with control characters and bytes that are not UTF-8
/// escaped (`\n`, `\u{1b}`, `\xff`), so that nothing a peer sends can move the cursor or
/// recolour a terminal.
pub struct Escaped<'a, T: AsRef<[u8]> + ?Sized>(pub &'a T);

impl<T: AsRef<[u8]> + ?Sized> fmt::Display for Escaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.as_ref().utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_and_dotted_names() {
        for n in [
            "a.img",
            "..cache",
            "a..b",
            ".hidden",
            "ünïcode 名前",
            &"x".repeat(255),
        ] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_unsafe_names() {
        for n in [
            "",
            ".",
            "..",
            "a/b",
            "/etc",
            "../x",
            "a\0b",
            "a\nb",
            "\u{1b}[31m",
            "\u{9b}x",
        ] {
            assert!(validate_name(n).is_err(), "{n:?}");
        }
        assert_eq!(
            validate_name(&"x".repeat(256)),
            Err(NameError::TooLong(256))
        );
        assert!(validate_name(".zrecv-abc.part").is_err());
    }

    #[test]
    fn escaping_removes_control_characters() {
        let shown = Escaped("a\u{1b}[2Jb\n").to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.starts_with('a') && shown.contains('b'));
    }

    proptest! {
        #[test]
        fn accepted_names_are_single_components(n in "\\PC{0,300}|[./a\\x00-\\x1f]{0,8}") {
            if validate_name(&n).is_ok() {
                let p = std::path::Path::new(&n);
                let comps: Vec<_> = p.components().collect();
                prop_assert_eq!(comps.len(), 1);
                prop_assert!(matches!(comps[0], std::path::Component::Normal(_)));
                prop_assert!(n.len() <= MAX_NAME_LEN);
            }
        }
    }
}
