//! The guestfish dialect, as text: a script becomes a list of lines to run, each a guestfish
//! command with its arguments, a host shell command (`!…`), or a host command whose output
//! is run as more commands (`<!…`). Pure: nothing here runs anything.
//!
//! The rules are those of libguestfs's `fish/fish.c` (`parse_command_line`,
//! `parse_quoted_string`) and `fish/file.c` (`file_in`), which HPE's plan scripts were
//! written against:
//! - Leading blanks are skipped. A line whose first non-blank character is `#` is a comment;
//!   a `#` anywhere else is an ordinary character (`echo a # b` prints `a # b`).
//! - A leading `-` lets that one command fail without ending the run (`-mount …`, `-!cmd`,
//!   `- cmd`); several may be given.
//! - `!rest` hands the rest of the line to the shell; `<!rest` runs it and executes each line
//!   of its output as a command.
//! - The command name runs to the first space or tab and cannot be quoted. Arguments are
//!   separated by spaces and tabs: `"…"` takes C escapes (`\n`, `\t`, `\xHH` and three-digit
//!   octal, `\\`, `\"`…; an unknown escape is an error), `'…'` is literal, and a quoted
//!   argument must be followed by a blank or the end of the line. An unquoted argument that
//!   begins with `|` sends the rest of the line, raw, to the shell with the command's output
//!   on its stdin.
//! - A file-in argument (`upload`'s first, `tar-in`'s first …; the command table says which)
//!   may be `-<<TAG`: its content is the lines that follow, each with its newline, up to a
//!   line that is exactly `TAG` (a final `TAG` without a newline also ends it). Only file-in
//!   arguments do this; elsewhere `-<<TAG` is an ordinary string, as in guestfish.
//! - There is no line continuation; a carriage return is an ordinary character.
//!
//! Where strata differs on purpose: the whole script is parsed before anything runs, so a
//! syntax error on line 40 fails the run before line 1 has changed the disk (guestfish would
//! have run lines 1–39 first; a failed run leaves no volume either way).

use std::fmt;

/// One thing to run, from one line of a script (or from one line of a `<!` command's
/// output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the script (for a heredoc command, its first line).
    pub number: usize,
    /// The line as written, for messages.
    pub text: String,
    /// A leading `-`: a failure is reported and the run goes on.
    pub ignore_errors: bool,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A guestfish command.
    Command(Command),
    /// `!cmd`: a host shell command.
    Shell(String),
    /// `<!cmd`: a host command whose output lines are run as commands.
    Inline(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub args: Vec<Arg>,
    /// `| shell command`: what the command prints goes to this command's stdin instead.
    pub pipe: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// An ordinary argument, its quotes and escapes resolved. Bytes, since `\xHH` may make
    /// a string that is not UTF-8 (guestfish passes C strings).
    Word(Vec<u8>),
    /// A file-in argument given as a heredoc: the content itself.
    Heredoc { tag: String, content: Vec<u8> },
}

impl Arg {
    /// The argument as text (lossy for bytes that are not UTF-8).
    pub fn text(&self) -> String {
        match self {
            Arg::Word(w) => String::from_utf8_lossy(w).into_owned(),
            Arg::Heredoc { tag, .. } => format!("-<<{tag}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A parsed script: the lines to run, and every syntax error found (parsing goes on after
/// an error so that `strata script lint` reports them all).
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub lines: Vec<Line>,
    pub errors: Vec<ParseError>,
}

/// Whether argument `index` (0-based) of command `name` is a file-in argument, so that
/// `-<<TAG` there starts a heredoc.
pub type FileInTest<'a> = &'a dyn Fn(&str, usize) -> bool;

/// Parses a whole script.
pub fn parse(text: &str, file_in: FileInTest) -> Parsed {
    let raw: Vec<&str> = text.split('\n').collect();
    // A final newline does not start one more (empty) line.
    let count = if text.ends_with('\n') {
        raw.len() - 1
    } else {
        raw.len()
    };
    let mut out = Parsed::default();
    let mut i = 0;
    while i < count {
        let number = i + 1;
        let line = raw[i];
        i += 1;
        match parse_line(line, number, file_in) {
            Ok(None) => {}
            Ok(Some(mut l)) => {
                if let Action::Command(c) = &mut l.action {
                    for arg in c.args.iter_mut() {
                        let Arg::Heredoc { tag, content } = arg else {
                            continue;
                        };
                        let mut closed = false;
                        while i < count {
                            let body = raw[i];
                            i += 1;
                            if body == tag {
                                closed = true;
                                break;
                            }
                            content.extend_from_slice(body.as_bytes());
                            content.push(b'\n');
                        }
                        if !closed {
                            out.errors.push(ParseError {
                                line: number,
                                message: format!(
                                    "the heredoc -<<{tag} is never closed: no line reads exactly {tag:?} before the end of the script"
                                ),
                            });
                        }
                    }
                }
                out.lines.push(l);
            }
            Err(message) => out.errors.push(ParseError {
                line: number,
                message,
            }),
        }
    }
    out
}

/// Parses one line. Heredoc arguments come back empty; `parse` fills them from the lines
/// that follow. `Ok(None)` for a blank line or a comment.
pub fn parse_line(line: &str, number: usize, file_in: FileInTest) -> Result<Option<Line>, String> {
    let b = line.as_bytes();
    let mut p = 0;
    let mut ignore_errors = false;
    let action = loop {
        while p < b.len() && b[p].is_ascii_whitespace() {
            p += 1;
        }
        if p == b.len() || b[p] == b'#' {
            return Ok(None);
        }
        match b[p] {
            b'!' => break Action::Shell(line[p + 1..].to_string()),
            b'<' if b.get(p + 1) == Some(&b'!') => break Action::Inline(line[p + 2..].to_string()),
            b'-' => {
                ignore_errors = true;
                p += 1;
            }
            _ => break Action::Command(parse_command(&line[p..], file_in)?),
        }
    };
    Ok(Some(Line {
        number,
        text: line.to_string(),
        ignore_errors,
        action,
    }))
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn parse_command(s: &str, file_in: FileInTest) -> Result<Command, String> {
    let b = s.as_bytes();
    let end = b.iter().position(|&c| is_blank(c)).unwrap_or(b.len());
    let name = s[..end].to_string();
    let mut p = end;
    let mut args = Vec::new();
    let mut pipe = None;
    loop {
        while p < b.len() && is_blank(b[p]) {
            p += 1;
        }
        if p == b.len() {
            break;
        }
        let word = match b[p] {
            b'"' => {
                let (w, next) = parse_double_quoted(b, p + 1)?;
                p = next;
                w
            }
            b'\'' => {
                let close = b[p + 1..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .ok_or("unterminated single quote")?;
                let w = b[p + 1..p + 1 + close].to_vec();
                p = p + 1 + close + 1;
                w
            }
            b'|' => {
                pipe = Some(s[p + 1..].to_string());
                break;
            }
            _ => {
                let len = b[p..]
                    .iter()
                    .position(|&c| is_blank(c))
                    .unwrap_or(b.len() - p);
                let w = b[p..p + len].to_vec();
                p += len;
                args.push(word_or_heredoc(&name, args.len(), w, file_in)?);
                continue;
            }
        };
        if p < b.len() && !is_blank(b[p]) {
            return Err("command arguments not separated by whitespace".into());
        }
        args.push(word_or_heredoc(&name, args.len(), word, file_in)?);
    }
    Ok(Command { name, args, pipe })
}

fn word_or_heredoc(
    name: &str,
    index: usize,
    w: Vec<u8>,
    file_in: FileInTest,
) -> Result<Arg, String> {
    if w.starts_with(b"-<<") && file_in(name, index) {
        let tag = String::from_utf8_lossy(&w[3..]).into_owned();
        if tag.is_empty() {
            return Err("missing end marker in -<< expression".into());
        }
        return Ok(Arg::Heredoc {
            tag,
            content: Vec::new(),
        });
    }
    Ok(Arg::Word(w))
}

/// A `"…"` string starting after its opening quote: its bytes and the index after the
/// closing quote.
fn parse_double_quoted(b: &[u8], mut p: usize) -> Result<(Vec<u8>, usize), String> {
    let start = p;
    let mut out = Vec::new();
    let bad = |at: usize| {
        format!(
            "invalid escape sequence in string (starting at offset {})",
            at - start
        )
    };
    while p < b.len() && b[p] != b'"' {
        if b[p] != b'\\' {
            out.push(b[p]);
            p += 1;
            continue;
        }
        let Some(&e) = b.get(p + 1) else {
            return Err(bad(p));
        };
        let simple = match e {
            b'\\' => Some(b'\\'),
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            b'"' => Some(b'"'),
            b'\'' => Some(b'\''),
            b'?' => Some(b'?'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            p += 2;
            continue;
        }
        // Octal: always three digits; hex: always two. NUL cannot be written.
        let value = match e {
            b'0'..=b'7' => {
                let d = b.get(p + 1..p + 4).ok_or_else(|| bad(p))?;
                if !d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    return Err(bad(p));
                }
                d.iter().fold(0u32, |v, c| v * 8 + (c - b'0') as u32)
            }
            b'x' => {
                let d = b.get(p + 2..p + 4).ok_or_else(|| bad(p))?;
                let s = std::str::from_utf8(d).map_err(|_| bad(p))?;
                if !d.iter().all(u8::is_ascii_hexdigit) {
                    return Err(bad(p));
                }
                u32::from_str_radix(s, 16).map_err(|_| bad(p))?
            }
            _ => return Err(bad(p)),
        };
        if !(1..=255).contains(&value) {
            return Err(bad(p));
        }
        out.push(value as u8);
        p += 4;
    }
    if p >= b.len() {
        return Err("unterminated double quote".into());
    }
    Ok((out, p + 1))
}

/// guestfish's integer arguments: gnulib's `xstrtoll` with base 0, so `0755` is octal,
/// `0x1ed` hex and `755` **decimal** (`chmod 755 /f` sets mode 01363, as it does in
/// guestfish), then an optional multiplier suffix (`k`/`K` = 1024, `M`, `G`, `T`, `P`,
/// `E`, powers of 1024; `KiB` the same, `kB`/`KB` powers of 1000).
pub fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, body) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    let end = body
        .char_indices()
        .find(|(_, c)| !c.is_digit(radix))
        .map(|(i, _)| i)
        .unwrap_or(body.len());
    let (digits, suffix) = body.split_at(end);
    if digits.is_empty() && !(radix == 8 && t == "0") {
        return None;
    }
    let v = if digits.is_empty() {
        0
    } else {
        i64::from_str_radix(digits, radix).ok()?
    };
    let mult: i64 = match suffix {
        "" => 1,
        _ => {
            let mut cs = suffix.chars();
            let power = match cs.next()? {
                'k' | 'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                'P' => 5,
                'E' => 6,
                _ => return None,
            };
            let base: i64 = match cs.as_str() {
                "" | "iB" => 1024,
                "B" => 1000,
                _ => return None,
            };
            base.checked_pow(power)?
        }
    };
    let v = v.checked_mul(mult)?;
    Some(if neg { -v } else { v })
}

/// guestfish's boolean arguments (`guestfs_int_is_true`): `1`, `true`, `t`, `yes`, `y`,
/// `on` are true, `0`, `false`, `f`, `no`, `n`, `off` false (any case); anything else is
/// not a boolean.
pub fn parse_bool(s: &str) -> Option<bool> {
    let l = s.to_ascii_lowercase();
    match l.as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload_first(name: &str, i: usize) -> bool {
        name == "upload" && i == 0
    }

    fn one(line: &str) -> Line {
        parse_line(line, 1, &upload_first).unwrap().unwrap()
    }

    fn words(line: &str) -> (String, Vec<String>) {
        match one(line).action {
            Action::Command(c) => (c.name, c.args.iter().map(Arg::text).collect()),
            a => panic!("not a command: {a:?}"),
        }
    }

    #[test]
    fn comments_and_blank_lines_are_skipped_but_a_hash_inside_a_line_is_text() {
        assert_eq!(parse_line("   # a comment", 1, &upload_first), Ok(None));
        assert_eq!(parse_line(" \t ", 1, &upload_first), Ok(None));
        assert_eq!(words("echo hello # world").1, vec!["hello", "#", "world"]);
    }

    #[test]
    fn quotes_escape_the_way_guestfish_escapes() {
        assert_eq!(
            words(r#"write /f "a\tb\n\x41\101\\\"" 'it' 's'"#).1,
            vec!["/f", "a\tb\nAA\\\"", "it", "s"]
        );
        assert_eq!(words("echo '\\n stays'").1, vec!["\\n stays"]);
        assert!(parse_line(r#"echo "\q""#, 1, &upload_first).is_err());
        assert!(parse_line(r#"echo "\x4""#, 1, &upload_first).is_err());
        assert!(parse_line(r#"echo "\000""#, 1, &upload_first).is_err());
        assert_eq!(
            parse_line(r#"echo "open"#, 1, &upload_first),
            Err("unterminated double quote".into())
        );
        assert_eq!(
            parse_line("echo 'open", 1, &upload_first),
            Err("unterminated single quote".into())
        );
        assert_eq!(
            parse_line(r#"echo "a"b"#, 1, &upload_first),
            Err("command arguments not separated by whitespace".into())
        );
    }

    #[test]
    fn unquoted_words_end_only_at_spaces_and_tabs() {
        assert_eq!(words("ln-sf a\"b c'd").1, vec!["a\"b", "c'd"]);
        assert_eq!(words("mount\t/dev/sda1  /").1, vec!["/dev/sda1", "/"]);
    }

    #[test]
    fn dash_bang_and_inline_prefixes() {
        let l = one("  -mount /dev/sda9 /");
        assert!(l.ignore_errors);
        assert!(matches!(l.action, Action::Command(ref c) if c.name == "mount"));
        let l = one("-!false");
        assert!(l.ignore_errors);
        assert_eq!(l.action, Action::Shell("false".into()));
        let l = one("- - cat /x");
        assert!(l.ignore_errors);
        assert_eq!(
            one("!source ./x").action,
            Action::Shell("source ./x".into())
        );
        assert_eq!(
            one("<!awk -F: '/vfat/ {print \"mount\", $1, \"/\"}' ./list-fs").action,
            Action::Inline("awk -F: '/vfat/ {print \"mount\", $1, \"/\"}' ./list-fs".into())
        );
        assert!(!one("mount /dev/sda1 /").ignore_errors);
    }

    #[test]
    fn a_bar_argument_pipes_the_rest_of_the_line_raw() {
        let Action::Command(c) = one("list-filesystems | cat > ./list-fs").action else {
            panic!()
        };
        assert!(c.args.is_empty());
        assert_eq!(c.pipe.as_deref(), Some(" cat > ./list-fs"));
        let Action::Command(c) = one("echo 'a|b' |grep -c a").action else {
            panic!()
        };
        assert_eq!(c.args, vec![Arg::Word(b"a|b".to_vec())]);
        assert_eq!(c.pipe.as_deref(), Some("grep -c a"));
    }

    #[test]
    fn heredocs_take_the_following_lines_up_to_the_tag() {
        let text = "upload -<<EOF /etc/motd\n\nhello\n  EOF not yet\nEOF\numount /\n";
        let p = parse(text, &upload_first);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.lines.len(), 2);
        let Action::Command(c) = &p.lines[0].action else {
            panic!()
        };
        assert_eq!(
            c.args[0],
            Arg::Heredoc {
                tag: "EOF".into(),
                content: b"\nhello\n  EOF not yet\n".to_vec()
            }
        );
        assert_eq!(p.lines[1].number, 6);
    }

    #[test]
    fn a_heredoc_closed_by_the_last_line_without_newline_is_complete() {
        let p = parse("upload -<<END /x\nbody\nEND", &upload_first);
        assert!(p.errors.is_empty());
        let Action::Command(c) = &p.lines[0].action else {
            panic!()
        };
        assert_eq!(
            c.args[0],
            Arg::Heredoc {
                tag: "END".into(),
                content: b"body\n".to_vec()
            }
        );
    }

    #[test]
    fn a_heredoc_left_open_is_an_error_naming_its_line_and_tag() {
        let p = parse("echo a\nupload -<<END /x\nbody\n", &upload_first);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, 2);
        assert!(p.errors[0].message.contains("END"));
    }

    #[test]
    fn heredoc_syntax_outside_a_file_in_argument_is_a_plain_string() {
        let p = parse("echo -<<EOF\nmount /dev/sda1 /\n", &upload_first);
        assert_eq!(p.lines.len(), 2);
        assert_eq!(
            p.lines[0].action,
            Action::Command(Command {
                name: "echo".into(),
                args: vec![Arg::Word(b"-<<EOF".to_vec())],
                pipe: None
            })
        );
    }

    #[test]
    fn parsing_goes_on_after_an_error_to_report_them_all() {
        let p = parse("echo \"a\nls /\necho 'b\n", &upload_first);
        assert_eq!(p.lines.len(), 1);
        assert_eq!(
            p.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[test]
    fn integers_parse_the_c_way_so_755_is_decimal() {
        assert_eq!(parse_int("0755"), Some(0o755));
        assert_eq!(parse_int("755"), Some(755));
        assert_eq!(parse_int("0x1ff"), Some(0o777));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("1k"), Some(1024));
        assert_eq!(parse_int("2KiB"), Some(2048));
        assert_eq!(parse_int("1kB"), Some(1000));
        assert_eq!(parse_int("08"), None);
        assert_eq!(parse_int("12x"), None);
        assert_eq!(parse_int(""), None);
    }

    #[test]
    fn booleans_follow_is_true() {
        for t in ["true", "TRUE", "t", "yes", "Y", "on", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "no", "0", "off", "F", "n"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panicking(s in "\\PC*") {
            let _ = parse(&s, &|_, _| true);
        }
    }
}
