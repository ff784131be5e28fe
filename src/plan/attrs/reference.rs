//! The reference grammar: finding `@Name@`, `@Name.field@`, `@Name:default@` and `@@` in a
//! plan script's text, and substituting them. Pure text work; what a name's value is comes
//! from [`Values`](super::Values). The grammar itself is written down in the parent module's
//! doc.

use std::ops::Range;

/// One custom-attribute reference found in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The attribute's name (`ManagementNIC1` in `@ManagementNIC1.mac@`).
    pub name: String,
    /// The sub-field after the dot, for NIC attributes and the built-ins (`mac`).
    pub field: Option<String>,
    /// The text after the colon, possibly empty (`@Name:@`), never holding `@` or a line break.
    pub default: Option<String>,
    /// 1-based line of the opening `@`.
    pub line: usize,
    /// Byte range of the whole reference, both `@` included.
    pub span: Range<usize>,
}

impl Reference {
    /// `Name` or `Name.field`, the way errors and listings spell it.
    pub fn key(&self) -> String {
        match &self.field {
            Some(f) => format!("{}.{}", self.name, f),
            None => self.name.clone(),
        }
    }
}

/// A piece of a scanned text: literal text, a `@@` escape, or a reference.
pub(super) enum Piece<'a> {
    Text(&'a str),
    At,
    Ref(Reference),
}

fn is_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_rest(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `s` is a name (or a field) the grammar accepts: `[A-Za-z_][A-Za-z0-9_]*`.
pub(super) fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && is_start(b[0]) && b[1..].iter().all(|&c| is_rest(c))
}

/// Where the parts of one reference lie in the text.
struct Parts {
    name: Range<usize>,
    field: Option<Range<usize>>,
    default: Option<Range<usize>>,
    /// Just past the closing `@`.
    end: usize,
}

/// Tries to read a reference whose opening `@` is at `at`.
fn parse_at(b: &[u8], at: usize) -> Option<Parts> {
    let mut i = at + 1;
    if i >= b.len() || !is_start(b[i]) {
        return None;
    }
    let name_start = i;
    while i < b.len() && is_rest(b[i]) {
        i += 1;
    }
    let name = name_start..i;
    let mut field = None;
    if i < b.len() && b[i] == b'.' {
        let fs = i + 1;
        if fs >= b.len() || !is_start(b[fs]) {
            return None;
        }
        i = fs;
        while i < b.len() && is_rest(b[i]) {
            i += 1;
        }
        field = Some(fs..i);
    }
    let mut default = None;
    if i < b.len() && b[i] == b':' {
        let ds = i + 1;
        i = ds;
        // The default runs to the next `@` on the same line; a line break or the end of the
        // text first means this `@` was not a reference after all (`user@host:/tmp`).
        while i < b.len() && b[i] != b'@' {
            if b[i] == b'\n' || b[i] == b'\r' {
                return None;
            }
            i += 1;
        }
        default = Some(ds..i);
    }
    if i < b.len() && b[i] == b'@' {
        Some(Parts {
            name,
            field,
            default,
            end: i + 1,
        })
    } else {
        None
    }
}

/// Splits `text` into literal pieces, `@@` escapes and references, left to right. An `@` that
/// starts neither is literal text, and scanning goes on from the character after it.
pub(super) fn scan(text: &str) -> Vec<Piece<'_>> {
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let mut line = 1usize;
    let mut lit_start = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'@' if i + 1 < b.len() && b[i + 1] == b'@' => {
                if lit_start < i {
                    pieces.push(Piece::Text(&text[lit_start..i]));
                }
                pieces.push(Piece::At);
                i += 2;
                lit_start = i;
            }
            b'@' => match parse_at(b, i) {
                Some(Parts {
                    name,
                    field,
                    default,
                    end,
                }) => {
                    if lit_start < i {
                        pieces.push(Piece::Text(&text[lit_start..i]));
                    }
                    pieces.push(Piece::Ref(Reference {
                        name: text[name].to_string(),
                        field: field.map(|r| text[r].to_string()),
                        default: default.map(|r| text[r].to_string()),
                        line,
                        span: i..end,
                    }));
                    // A reference never spans a line break, so `line` stays right.
                    i = end;
                    lit_start = i;
                }
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    if lit_start < b.len() {
        pieces.push(Piece::Text(&text[lit_start..]));
    }
    pieces
}

/// Every reference in `text`, in order of appearance (repeats included). `@@` escapes and
/// `@` characters that start no reference (`$@`, `${a[@]}`, `user@host`) are not listed.
pub fn references(text: &str) -> Vec<Reference> {
    scan(text)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<(String, Option<String>, usize)> {
        references(text)
            .into_iter()
            .map(|r| (r.key(), r.default, r.line))
            .collect()
    }

    #[test]
    fn finds_plain_field_and_default_references_with_lines() {
        let t = "echo @A@\nx @Nic.mac@ y\n@B:some default/with:colons@\n";
        assert_eq!(
            keys(t),
            vec![
                ("A".into(), None, 1),
                ("Nic.mac".into(), None, 2),
                ("B".into(), Some("some default/with:colons".into()), 3)
            ]
        );
    }

    #[test]
    fn default_with_spaces_runs_to_the_next_at_sign() {
        let r = references("esxcli @FireWallServices:syslog ntpClient httpClient@ x");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].default.as_deref(), Some("syslog ntpClient httpClient"));
        assert_eq!(r[0].span, 7..53);
    }

    #[test]
    fn empty_default_is_a_default() {
        let r = references("@A:@");
        assert_eq!(r[0].default.as_deref(), Some(""));
    }

    #[test]
    fn bash_at_signs_are_not_references() {
        for t in [
            "for user in \"${array[@]}\"",
            "exec \"$@\"",
            "echo $@ and $@",
            "mail root@localhost",
            "scp f root@host:/tmp/x",
            "a@b.com, c@d.com",
            "if [[ $ip =~ \\@ ]] ; then",
            "if [[ \"$d\" =~ \\.@ ]] ; then",
            "@ alone",
            "trailing @",
            "@1digit@",
            "@Name.@",
            "@Name.field.more@",
            "@Name.9x@",
        ] {
            assert!(references(t).is_empty(), "{t:?} gave {:?}", references(t));
        }
    }

    #[test]
    fn default_does_not_cross_a_line_break() {
        // `root@host:` on one line and an `@` on the next must stay literal.
        assert!(references("scp x root@host:/a\necho done@").is_empty());
        assert!(references("@A:x\r\n@").is_empty());
    }

    #[test]
    fn double_at_is_an_escape_not_a_reference() {
        assert!(references("@@A@@").is_empty());
        assert!(references("s@@a@@b@@g").is_empty());
        // Adjacent references share no `@`.
        assert_eq!(
            keys("@A@@B@").into_iter().map(|k| k.0).collect::<Vec<_>>(),
            vec!["A", "B"]
        );
    }

    #[test]
    fn a_failed_start_lets_a_later_at_start_a_reference() {
        assert_eq!(
            keys("a@b c@D@")
                .into_iter()
                .map(|k| k.0)
                .collect::<Vec<_>>(),
            vec!["D"]
        );
        assert_eq!(
            keys("${a[@]} @X@")
                .into_iter()
                .map(|k| k.0)
                .collect::<Vec<_>>(),
            vec!["X"]
        );
    }

    #[test]
    fn field_and_default_together() {
        let r = references("-v @ManagementNIC.vlanid:0@ -p");
        assert_eq!(r[0].name, "ManagementNIC");
        assert_eq!(r[0].field.as_deref(), Some("vlanid"));
        assert_eq!(r[0].default.as_deref(), Some("0"));
    }

    #[test]
    fn non_ascii_text_and_defaults_are_kept_whole() {
        let r = references("echo “@N:défaut é@” ü@");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].default.as_deref(), Some("défaut é"));
    }
}
