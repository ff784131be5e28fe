//! Validation of image and volume names: they become directory names in the repository, so
//! anything that could escape it or confuse a shell or a listing is refused up front.

use super::error::{Result, StoreError};

/// Longest name accepted (bytes). Keeps paths well under PATH_MAX and IQNs under 223 bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that `name` is usable as an image or volume name: 1–128 characters from
/// `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn validate(name: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(StoreError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("a name must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!("a name is at most {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let shown = if c.is_control() {
            format!("control character U+{:04X}", c as u32)
        } else {
            format!("character {c:?}")
        };
        return bad(format!(
            "{shown} is not allowed; use letters, digits, '.', '_' and '-'"
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("a name must not start with '.' or '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["rhel8", "web-01", "esx_7.0u3", "A"] {
            validate(n).unwrap();
        }
    }

    #[test]
    fn refuses_paths_dots_and_control_characters() {
        for n in [
            "", "a/b", "..", ".hidden", "-x", "a\nb", "tab\t", "sp ace", "é",
        ] {
            let e = validate(n).unwrap_err().to_string();
            assert!(e.contains("invalid name"), "{n:?}: {e}");
        }
        assert!(validate(&"x".repeat(129)).is_err());
        assert!(validate(&"x".repeat(128)).is_ok());
    }
}
