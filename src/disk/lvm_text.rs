//! LVM2's text metadata format: the volume group description that every physical volume's
//! metadata area holds, turned into the few facts strata needs (the VG's name, UUID,
//! sequence number and extent size; its PVs; its LVs and their segments). Pure parsing, no
//! I/O: `disk/lvm.rs` finds the text on disk and maps the LVs onto devices.
//!
//! The format is LVM's configuration syntax (libdm-config):
//! ```text
//! vg0 {                         # a section: name { ... }
//!     id = "sGr0Nt-FXy8-..."    # key = value; strings in "..." with \" and \\ escapes
//!     seqno = 8                 # integers (64-bit, may be negative)
//!     status = ["READ", "WRITE"] # flat lists of values
//!     physical_volumes { pv0 { ... } }
//!     logical_volumes { root { segment1 { ... } } }
//! }
//! contents = "Text Format Volume Group"   # top-level keys around the one VG section
//! ```
//! The text is untrusted input: its size is capped (`MAX_TEXT`), nesting is capped
//! (`MAX_DEPTH`), the tree is never larger than the text, numbers are range-checked before
//! any arithmetic, and nothing here panics or loops on any bytes. Counts written in the text
//! (`segment_count`) are compared with what is there, never used to size anything.
//!
//! Only linear segments (`type = "striped"` with one stripe) are understood; every other
//! segment type is kept, by name, as unsupported so the layer above can say why it refuses
//! the LV.

use crate::disk::{DiskError, SECTOR};

/// Bound on the text we parse. Real metadata is a few KiB per LV (a VG with a thousand LVs
/// is under 4 MiB) and LVM's default metadata area is 1 MiB; 32 MiB leaves room for huge
/// VGs while bounding what hostile input can make us allocate.
pub const MAX_TEXT: usize = 32 << 20;
/// Bound on section nesting. Real metadata nests four deep (VG, logical_volumes, LV,
/// segment); the bound keeps a hostile `a{a{a{...` from exhausting the stack.
pub const MAX_DEPTH: usize = 16;

/// The facts of one volume group, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroupMeta {
    pub name: String,
    pub id: String,
    pub seqno: u64,
    /// Bytes per extent (the text gives 512-byte sectors).
    pub extent_size: u64,
    pub status: Vec<String>,
    pub pvs: Vec<PvMeta>,
    pub lvs: Vec<LvMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvMeta {
    /// The name segments use to refer to it (`pv0`).
    pub name: String,
    /// The PV UUID as LVM prints it, with dashes.
    pub id: String,
    /// The device LVM last saw it on (`/dev/sda2`): a hint only.
    pub device_hint: Option<String>,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    /// Byte offset of the first extent on the PV.
    pub pe_start: u64,
    pub pe_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMeta {
    pub name: String,
    pub id: String,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    /// Sorted by `start_extent`, contiguous from extent 0 (checked).
    pub segments: Vec<SegmentMeta>,
}

impl LvMeta {
    /// Hidden LVs (thin pool data and metadata, RAID images, mirror logs, pvmove, snapshot
    /// internals) lack VISIBLE: LVM never shows them as `/dev/VG/LV`.
    pub fn is_visible(&self) -> bool {
        self.status.iter().any(|s| s == "VISIBLE")
    }

    /// Whether the LV carries `flag` in its status or its (compatibility) flags list:
    /// LVM writes flags older versions must still accept into `flags`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.status.iter().chain(&self.flags).any(|s| s == flag)
    }

    pub fn extent_count(&self) -> u64 {
        self.segments.iter().map(|s| s.extent_count).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// First extent of the LV this segment covers.
    pub start_extent: u64,
    pub extent_count: u64,
    pub kind: SegmentKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// `extent_count` extents of `area` (a PV's name such as `pv0`, or, while a pvmove runs,
    /// an LV's name) from its extent `area_start`.
    Linear { area: String, area_start: u64 },
    /// A snapshot's hidden LV: `origin` is the snapshotted LV, `cow_store` the visible LV
    /// holding the copied-on-write chunks. Both look linear but are not plain data.
    Snapshot { origin: String, cow_store: String },
    /// Anything else, with the segment type's name (`thin`, `raid1`, `striped`, ...) and,
    /// where the name alone does not say it, why (`3 stripes`).
    Unsupported { type_name: String, detail: String },
}

impl SegmentKind {
    /// "unsupported segment type X" wording for refusals.
    pub fn describe(&self) -> String {
        match self {
            SegmentKind::Linear { .. } => "linear".into(),
            SegmentKind::Snapshot { .. } => "unsupported segment type snapshot".into(),
            SegmentKind::Unsupported { type_name, detail } if detail.is_empty() => {
                format!("unsupported segment type {type_name}")
            }
            SegmentKind::Unsupported { type_name, detail } => {
                format!("unsupported segment type {type_name} ({detail})")
            }
        }
    }
}

/// Parses metadata text into the VG's facts. The error says where (line) and what.
pub fn parse(text: &str) -> Result<VolumeGroupMeta, DiskError> {
    let root = parse_tree(text)?;
    volume_group(&root)
}

fn error(line: usize, detail: impl Into<String>) -> DiskError {
    DiskError::ParsingLvmMetadata {
        line,
        detail: detail.into(),
    }
}

// ---- the syntax tree ----

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Value(Value),
    Section(Section),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Section {
    /// Line of the section's name (0 for the root), for error messages.
    line: usize,
    items: Vec<(String, Node, usize)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<(&Node, usize)> {
        // LVM takes the first occurrence of a key.
        self.items
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, n, l)| (n, *l))
    }

    fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.items.iter().filter_map(|(k, n, _)| match n {
            Node::Section(s) => Some((k.as_str(), s)),
            Node::Value(_) => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    ListOpen,
    ListClose,
    Comma,
    Equals,
    /// A quoted string, escapes resolved.
    Str(String),
    /// An unquoted word: a key, a section name, or a number.
    Word(String),
    End,
}

struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
}

/// Bytes that end an unquoted word.
fn is_delimiter(c: u8) -> bool {
    c.is_ascii_whitespace() || b"{}[],=\"'#".contains(&c)
}

impl Lexer<'_> {
    fn next(&mut self) -> Result<(Token, usize), DiskError> {
        // Skip whitespace and comments (a # outside a string runs to the end of the line).
        loop {
            match self.b.get(self.pos) {
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(c) if c.is_ascii_whitespace() => self.pos += 1,
                Some(b'#') => {
                    while self.b.get(self.pos).is_some_and(|&c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
        let line = self.line;
        let Some(&c) = self.b.get(self.pos) else {
            return Ok((Token::End, line));
        };
        self.pos += 1;
        let t = match c {
            b'{' => Token::Open,
            b'}' => Token::Close,
            b'[' => Token::ListOpen,
            b']' => Token::ListClose,
            b',' => Token::Comma,
            b'=' => Token::Equals,
            b'"' => Token::Str(self.string(b'"', true, line)?),
            // Single quotes: no escapes, as in libdm-config.
            b'\'' => Token::Str(self.string(b'\'', false, line)?),
            _ => {
                let start = self.pos - 1;
                while self.b.get(self.pos).is_some_and(|&c| !is_delimiter(c)) {
                    self.pos += 1;
                }
                Token::Word(String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
            }
        };
        Ok((t, line))
    }

    fn string(&mut self, quote: u8, escapes: bool, line: usize) -> Result<String, DiskError> {
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.b.get(self.pos) else {
                return Err(error(line, "unterminated string (no closing quote)"));
            };
            self.pos += 1;
            match c {
                c if c == quote => break,
                b'\\' if escapes => {
                    // LVM escapes only " and \ (with a backslash); any escaped byte stands
                    // for itself.
                    let Some(&e) = self.b.get(self.pos) else {
                        return Err(error(line, "unterminated string (ends in a backslash)"));
                    };
                    self.pos += 1;
                    if e == b'\n' {
                        self.line += 1;
                    }
                    out.push(e);
                }
                b'\n' => {
                    self.line += 1;
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<(Token, usize)>,
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<&(Token, usize), DiskError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn take(&mut self) -> Result<(Token, usize), DiskError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }

    /// Items until `}` (or the end of the text at depth 0).
    fn section_body(&mut self, depth: usize, line: usize) -> Result<Section, DiskError> {
        let mut section = Section {
            line,
            items: Vec::new(),
        };
        loop {
            let (t, at) = self.take()?;
            let key = match t {
                Token::End if depth == 0 => return Ok(section),
                Token::End => {
                    return Err(error(
                        at,
                        format!("the text ends inside the section that starts at line {line}"),
                    ))
                }
                Token::Close if depth > 0 => return Ok(section),
                Token::Word(w) | Token::Str(w) => w,
                other => return Err(error(at, format!("expected a key, found {other:?}"))),
            };
            match self.take()? {
                (Token::Equals, _) => {
                    let v = self.value(at)?;
                    section.items.push((key, Node::Value(v), at));
                }
                (Token::Open, _) => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(error(
                            at,
                            format!("sections nested deeper than {MAX_DEPTH} levels"),
                        ));
                    }
                    let s = self.section_body(depth + 1, at)?;
                    section.items.push((key, Node::Section(s), at));
                }
                (other, l) => {
                    return Err(error(
                        l,
                        format!("expected \"=\" or \"{{\" after {key:?}, found {other:?}"),
                    ))
                }
            }
        }
    }

    fn value(&mut self, line: usize) -> Result<Value, DiskError> {
        let (t, at) = self.take()?;
        match t {
            Token::ListOpen => {
                let mut items = Vec::new();
                if matches!(self.peek()?, (Token::ListClose, _)) {
                    self.take()?;
                    return Ok(Value::List(items));
                }
                loop {
                    let (t, at) = self.take()?;
                    items.push(match t {
                        Token::ListOpen => {
                            return Err(error(at, "lists cannot hold lists"));
                        }
                        t => self.scalar(t, at)?,
                    });
                    match self.take()? {
                        (Token::Comma, _) => {}
                        (Token::ListClose, _) => return Ok(Value::List(items)),
                        (Token::End, l) => {
                            return Err(error(
                                l,
                                format!("the text ends inside the list that starts at line {line}"),
                            ))
                        }
                        (other, l) => {
                            return Err(error(
                                l,
                                format!("expected \",\" or \"]\" in a list, found {other:?}"),
                            ))
                        }
                    }
                }
            }
            t => self.scalar(t, at),
        }
    }

    fn scalar(&mut self, t: Token, at: usize) -> Result<Value, DiskError> {
        match t {
            Token::Str(s) => Ok(Value::Str(s)),
            Token::Word(w) => number(&w, at),
            Token::End => Err(error(at, "the text ends where a value was expected")),
            other => Err(error(at, format!("expected a value, found {other:?}"))),
        }
    }
}

/// An unquoted value: an integer or a float, as libdm-config writes them.
fn number(w: &str, line: usize) -> Result<Value, DiskError> {
    let digits = w.strip_prefix(['-', '+']).unwrap_or(w);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return Err(error(
            line,
            format!("{w:?} is neither a number nor a quoted string"),
        ));
    }
    if digits.contains('.') {
        return w
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| error(line, format!("{w:?} is not a number")));
    }
    w.parse::<i64>()
        .map(Value::Int)
        .map_err(|_| error(line, format!("integer {w} is out of range")))
}

fn parse_tree(text: &str) -> Result<Section, DiskError> {
    if text.len() > MAX_TEXT {
        return Err(error(
            0,
            format!(
                "the text is {} bytes, more than the {MAX_TEXT}-byte limit",
                text.len()
            ),
        ));
    }
    let mut p = Parser {
        lex: Lexer {
            b: text.as_bytes(),
            pos: 0,
            line: 1,
        },
        peeked: None,
    };
    p.section_body(0, 0)
}

// ---- from the tree to the VG's facts ----

/// Typed look-ups in one section, with errors that name the section and the key.
struct Fields<'a> {
    s: &'a Section,
    what: String,
}

impl Fields<'_> {
    fn node(&self, key: &str) -> Result<(&Node, usize), DiskError> {
        self.s
            .get(key)
            .ok_or_else(|| error(self.s.line, format!("{} has no {key}", self.what)))
    }

    fn value(&self, key: &str) -> Result<Option<(&Value, usize)>, DiskError> {
        match self.s.get(key) {
            None => Ok(None),
            Some((Node::Value(v), l)) => Ok(Some((v, l))),
            Some((Node::Section(_), l)) => Err(error(
                l,
                format!("{key} in {} is a section, not a value", self.what),
            )),
        }
    }

    fn str(&self, key: &str) -> Result<String, DiskError> {
        self.node(key)?;
        self.opt_str(key)?
            .ok_or_else(|| error(self.s.line, format!("{} has no {key}", self.what)))
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, DiskError> {
        match self.value(key)? {
            None => Ok(None),
            Some((Value::Str(s), _)) => Ok(Some(s.clone())),
            Some((_, l)) => Err(error(l, format!("{key} in {} is not a string", self.what))),
        }
    }

    /// A non-negative integer no larger than `max`.
    fn uint(&self, key: &str, max: u64) -> Result<u64, DiskError> {
        let (v, l) = self
            .value(key)?
            .ok_or_else(|| error(self.s.line, format!("{} has no {key}", self.what)))?;
        match v {
            Value::Int(i) if *i >= 0 && (*i as u64) <= max => Ok(*i as u64),
            Value::Int(i) => Err(error(
                l,
                format!("{key} = {i} in {} is outside 0..={max}", self.what),
            )),
            _ => Err(error(
                l,
                format!("{key} in {} is not an integer", self.what),
            )),
        }
    }

    /// A list of strings; absent is empty.
    fn strings(&self, key: &str) -> Result<Vec<String>, DiskError> {
        match self.value(key)? {
            None => Ok(Vec::new()),
            Some((Value::List(items), l)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.clone()),
                    _ => Err(error(
                        l,
                        format!("{key} in {} holds a non-string", self.what),
                    )),
                })
                .collect(),
            Some((_, l)) => Err(error(l, format!("{key} in {} is not a list", self.what))),
        }
    }

    fn section(&self, key: &str) -> Result<Option<&Section>, DiskError> {
        match self.s.get(key) {
            None => Ok(None),
            Some((Node::Section(s), _)) => Ok(Some(s)),
            Some((Node::Value(_), l)) => Err(error(
                l,
                format!("{key} in {} is a value, not a section", self.what),
            )),
        }
    }
}

/// LVM's extent fields are 32-bit.
const MAX_EXTENTS: u64 = u32::MAX as u64;

fn volume_group(root: &Section) -> Result<VolumeGroupMeta, DiskError> {
    let top = Fields {
        s: root,
        what: "the metadata".into(),
    };
    if let Some(c) = top.opt_str("contents")? {
        if c != "Text Format Volume Group" {
            return Err(error(
                0,
                format!("contents = {c:?}: not LVM2 volume group metadata"),
            ));
        }
    }
    if let Some((v, l)) = top.value("version")? {
        if *v != Value::Int(1) {
            return Err(error(
                l,
                format!("metadata format version {v:?} (only version 1 exists)"),
            ));
        }
    }
    // The VG is the first top-level section, as LVM reads it.
    let Some((name, vg)) = root.sections().next() else {
        return Err(error(0, "no volume group section"));
    };
    let f = Fields {
        s: vg,
        what: format!("volume group {name:?}"),
    };
    let extent_sectors = f.uint("extent_size", MAX_EXTENTS)?;
    if extent_sectors == 0 {
        return Err(error(vg.line, format!("{}: extent_size is 0", f.what)));
    }
    let mut pvs = Vec::new();
    if let Some(list) = f.section("physical_volumes")? {
        for (pv_name, s) in list.sections() {
            pvs.push(physical_volume(pv_name, s)?);
        }
    }
    for (i, pv) in pvs.iter().enumerate() {
        if pvs[..i].iter().any(|p| p.name == pv.name) {
            return Err(error(
                vg.line,
                format!("{}: PV {:?} is listed twice", f.what, pv.name),
            ));
        }
    }
    let mut lvs = Vec::new();
    if let Some(list) = f.section("logical_volumes")? {
        for (lv_name, s) in list.sections() {
            lvs.push(logical_volume(lv_name, s)?);
        }
    }
    for (i, lv) in lvs.iter().enumerate() {
        if lvs[..i].iter().any(|l| l.name == lv.name) {
            return Err(error(
                vg.line,
                format!("{}: LV {:?} is listed twice", f.what, lv.name),
            ));
        }
    }
    Ok(VolumeGroupMeta {
        name: name.to_string(),
        id: f.str("id")?,
        seqno: f.uint("seqno", u64::MAX)?,
        extent_size: extent_sectors * SECTOR,
        status: f.strings("status")?,
        pvs,
        lvs,
    })
}

fn physical_volume(name: &str, s: &Section) -> Result<PvMeta, DiskError> {
    let f = Fields {
        s,
        what: format!("PV {name:?}"),
    };
    // pe_start is a sector count; in bytes it must still fit a u64.
    let pe_start = f.uint("pe_start", u64::MAX / SECTOR)? * SECTOR;
    Ok(PvMeta {
        name: name.to_string(),
        id: f.str("id")?,
        device_hint: f.opt_str("device")?,
        status: f.strings("status")?,
        flags: f.strings("flags")?,
        pe_start,
        pe_count: f.uint("pe_count", MAX_EXTENTS)?,
    })
}

fn logical_volume(name: &str, s: &Section) -> Result<LvMeta, DiskError> {
    let f = Fields {
        s,
        what: format!("LV {name:?}"),
    };
    let declared = f.uint("segment_count", u64::MAX)?;
    let mut segments = Vec::new();
    for (seg_name, seg) in s.sections() {
        if seg_name.starts_with("segment") {
            segments.push(segment(name, seg_name, seg)?);
        }
    }
    if segments.len() as u64 != declared {
        return Err(error(
            s.line,
            format!(
                "{}: segment_count = {declared} but {} segments are present",
                f.what,
                segments.len()
            ),
        ));
    }
    segments.sort_by_key(|s| s.start_extent);
    let mut next = 0u64;
    for seg in &segments {
        if seg.start_extent != next {
            return Err(error(
                s.line,
                format!(
                    "{}: a segment starts at extent {} where extent {next} was expected \
                     (segments overlap or leave a gap)",
                    f.what, seg.start_extent
                ),
            ));
        }
        next = next.saturating_add(seg.extent_count);
    }
    Ok(LvMeta {
        name: name.to_string(),
        id: f.str("id")?,
        status: f.strings("status")?,
        flags: f.strings("flags")?,
        segments,
    })
}

fn segment(lv: &str, name: &str, s: &Section) -> Result<SegmentMeta, DiskError> {
    let f = Fields {
        s,
        what: format!("{name} of LV {lv:?}"),
    };
    let start_extent = f.uint("start_extent", MAX_EXTENTS)?;
    let extent_count = f.uint("extent_count", MAX_EXTENTS)?;
    if extent_count == 0 {
        return Err(error(s.line, format!("{}: extent_count is 0", f.what)));
    }
    let type_name = f.str("type")?;
    let kind = match type_name.as_str() {
        "striped" => striped(&f)?,
        "snapshot" => SegmentKind::Snapshot {
            origin: f.str("origin")?,
            cow_store: f.str("cow_store")?,
        },
        _ => SegmentKind::Unsupported {
            type_name,
            detail: String::new(),
        },
    };
    Ok(SegmentMeta {
        start_extent,
        extent_count,
        kind,
    })
}

fn striped(f: &Fields<'_>) -> Result<SegmentKind, DiskError> {
    let stripe_count = f.uint("stripe_count", MAX_EXTENTS)?;
    let (stripes, line) = match f.value("stripes")? {
        Some((Value::List(items), l)) => (items, l),
        Some((_, l)) => return Err(error(l, format!("stripes in {} is not a list", f.what))),
        None => return Err(error(f.s.line, format!("{} has no stripes", f.what))),
    };
    // stripes = [ "pv0", 0, "pv1", 0, ... ]: one (area, first extent) pair per stripe.
    if stripes.len() as u64 != stripe_count.saturating_mul(2) {
        return Err(error(
            line,
            format!(
                "{}: stripe_count = {stripe_count} but stripes has {} items",
                f.what,
                stripes.len()
            ),
        ));
    }
    if stripe_count != 1 {
        return Ok(SegmentKind::Unsupported {
            type_name: "striped".into(),
            detail: format!("{stripe_count} stripes"),
        });
    }
    match (&stripes[0], &stripes[1]) {
        (Value::Str(area), Value::Int(start)) if *start >= 0 && (*start as u64) <= MAX_EXTENTS => {
            Ok(SegmentKind::Linear {
                area: area.clone(),
                area_start: *start as u64,
            })
        }
        _ => Err(error(
            line,
            format!(
                "{}: stripes must be a name and a first extent, got {:?}",
                f.what, stripes
            ),
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Metadata as LVM 2.03 writes it into a metadata area (no indentation, comments,
    /// the VG section first), with a two-segment LV, a hidden LV, a thin pool and a
    /// snapshot.
    pub(crate) const SAMPLE: &str = r#"vg0 {
id = "sGr0Nt-FXy8-txdB-Gz3p-kH28-OBjS-VyZzHF"
seqno = 8
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = "2hxszJ-HRNf-dNIf-6wUf-69Vj-SE53-Rdtdbb"
device = "/dev/loop0"

status = ["ALLOCATABLE"]
flags = []
dev_size = 1000000
pe_start = 2048
pe_count = 121
}
}

logical_volumes {

root {
id = "Ufgepy-R0oz-l6dD-9lyk-n7SN-FnxW-hcDu30"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
creation_time = 1796161481
creation_host = "vm"
segment_count = 2

segment2 {
start_extent = 50
extent_count = 10

type = "striped"
stripe_count = 1

stripes = [
"pv0", 55
]
}
segment1 {
start_extent = 0
extent_count = 50

type = "striped"
stripe_count = 1	# linear

stripes = [
"pv0", 0
]
}
}

pool_tmeta {
id = "zDoEsr-rmB7-8I66-eF00-VdYx-xGEt-jKGkeg"
status = ["READ", "WRITE"]
flags = []
segment_count = 1

segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = [
"pv0", 75
]
}
}

pool {
id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-000001"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1

segment1 {
start_extent = 0
extent_count = 10
type = "thin-pool"
metadata = "pool_tmeta"
pool = "pool_tdata"
transaction_id = 1
chunk_size = 128
}
}

snapshot0 {
id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-000003"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 60
type = "snapshot"
chunk_size = 8
origin = "root"
cow_store = "snap"
}
}
}

}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Tue Dec  1 21:45:01 2026

contents = "Text Format Volume Group"
version = 1

description = "Write from \"lvcreate\" with a \\ backslash"

creation_host = "vm"	# Linux vm 6.18.44-fc-v857 #1 SMP PREEMPT_DYNAMIC @0 x86_64
creation_time = 1796161501	# Tue Dec  1 21:45:01 2026
"#;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn sample_metadata_gives_the_vg_pvs_and_lvs_in_bytes() {
        let vg = parse(SAMPLE).unwrap();
        assert_eq!(vg.name, "vg0");
        assert_eq!(vg.id, "sGr0Nt-FXy8-txdB-Gz3p-kH28-OBjS-VyZzHF");
        assert_eq!(vg.seqno, 8);
        assert_eq!(vg.extent_size, 4 << 20);
        assert_eq!(vg.status, ["RESIZEABLE", "READ", "WRITE"]);
        assert_eq!(
            vg.pvs,
            vec![PvMeta {
                name: "pv0".into(),
                id: "2hxszJ-HRNf-dNIf-6wUf-69Vj-SE53-Rdtdbb".into(),
                device_hint: Some("/dev/loop0".into()),
                status: vec!["ALLOCATABLE".into()],
                flags: vec![],
                pe_start: 1 << 20,
                pe_count: 121,
            }]
        );
        let names: Vec<_> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["root", "pool_tmeta", "pool", "snapshot0"]);
        let root = &vg.lvs[0];
        assert!(root.is_visible());
        assert!(!vg.lvs[1].is_visible());
        assert_eq!(root.extent_count(), 60);
        // Sorted by start extent although written segment2 first.
        assert_eq!(
            root.segments,
            vec![
                SegmentMeta {
                    start_extent: 0,
                    extent_count: 50,
                    kind: SegmentKind::Linear {
                        area: "pv0".into(),
                        area_start: 0
                    }
                },
                SegmentMeta {
                    start_extent: 50,
                    extent_count: 10,
                    kind: SegmentKind::Linear {
                        area: "pv0".into(),
                        area_start: 55
                    }
                },
            ]
        );
        assert_eq!(
            vg.lvs[2].segments[0].kind.describe(),
            "unsupported segment type thin-pool"
        );
        assert_eq!(
            vg.lvs[3].segments[0].kind,
            SegmentKind::Snapshot {
                origin: "root".into(),
                cow_store: "snap".into()
            }
        );
    }

    #[test]
    fn strings_resolve_escapes_and_keep_hashes() {
        let t = parse_tree(r#"a = "x\"y\\z # not a comment" b = 'q\n' c = -5 d = 1.5"#).unwrap();
        let get = |k| t.get(k).map(|(n, _)| n.clone());
        assert_eq!(
            get("a"),
            Some(Node::Value(Value::Str(r#"x"y\z # not a comment"#.into())))
        );
        assert_eq!(get("b"), Some(Node::Value(Value::Str(r"q\n".into()))));
        assert_eq!(get("c"), Some(Node::Value(Value::Int(-5))));
        assert_eq!(get("d"), Some(Node::Value(Value::Float(1.5))));
    }

    #[test]
    fn lists_may_be_empty_or_mixed_but_not_nested() {
        let t = parse_tree(r#"a = [] b = ["pv0", 0, "pv1", 7]"#).unwrap();
        assert_eq!(t.items[0].1, Node::Value(Value::List(vec![])));
        assert_eq!(
            t.items[1].1,
            Node::Value(Value::List(vec![
                Value::Str("pv0".into()),
                Value::Int(0),
                Value::Str("pv1".into()),
                Value::Int(7)
            ]))
        );
        let e = parse_tree("a = [[1]]").unwrap_err().to_string();
        assert!(e.contains("lists cannot hold lists"), "{e}");
        let e = parse_tree("a = [1 2]").unwrap_err().to_string();
        assert!(e.contains("expected \",\" or \"]\""), "{e}");
    }

    #[test]
    fn errors_name_the_line() {
        let e = err("vg {\nid = \"x\"\nseqno = 1\nextent_size = }\n}");
        assert!(
            e.contains("line 4") && e.contains("expected a value"),
            "{e}"
        );
    }

    #[test]
    fn truncated_text_is_refused_at_every_cut() {
        // Every prefix of real metadata either parses or fails with an error: no panic,
        // and no prefix that cuts into the VG section passes as the whole VG.
        let vg_end = SAMPLE.find("\n}\n#").unwrap();
        for cut in 0..SAMPLE.len() {
            if !SAMPLE.is_char_boundary(cut) {
                continue;
            }
            let r = parse(&SAMPLE[..cut]);
            if cut <= vg_end {
                assert!(r.is_err(), "prefix of {cut} bytes parsed");
            }
        }
    }

    #[test]
    fn unterminated_strings_are_refused() {
        for t in ["a = \"abc", "a = \"abc\\", "a = 'abc", "vg { id = \"x }"] {
            let e = err(t);
            assert!(e.contains("unterminated string"), "{t}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let t = "a {".repeat(100_000);
        let e = err(&t);
        assert!(e.contains("nested deeper than"), "{e}");
        // Exactly at the limit is fine.
        let ok = format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(parse_tree(&ok).is_ok());
        let over = format!(
            "{}{}",
            "a {".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(parse_tree(&over).is_err());
    }

    #[test]
    fn huge_numbers_and_counts_are_refused_not_trusted() {
        let e = err(&SAMPLE.replace("seqno = 8", "seqno = 99999999999999999999999"));
        assert!(e.contains("out of range"), "{e}");
        let e = err(&SAMPLE.replace("segment_count = 2", "segment_count = 4000000000000"));
        assert!(e.contains("segment_count = 4000000000000"), "{e}");
        let e = err(&SAMPLE.replace("extent_count = 50", "extent_count = 4294967296"));
        assert!(e.contains("outside 0..=4294967295"), "{e}");
        let e = err(&SAMPLE.replace("pe_count = 121", "pe_count = -1"));
        assert!(e.contains("pe_count = -1"), "{e}");
        let e = err(&SAMPLE.replace("pe_start = 2048", "pe_start = 36028797018963968"));
        assert!(e.contains("pe_start"), "{e}");
        let e = err(&SAMPLE.replace("extent_size = 8192", "extent_size = 0"));
        assert!(e.contains("extent_size is 0"), "{e}");
    }

    #[test]
    fn text_over_the_limit_is_refused_before_parsing() {
        let big = " ".repeat(MAX_TEXT + 1);
        assert!(err(&big).contains("limit"));
    }

    #[test]
    fn gaps_overlaps_and_bad_stripes_are_refused() {
        let e = err(&SAMPLE.replace("start_extent = 50", "start_extent = 51"));
        assert!(e.contains("gap"), "{e}");
        let e = err(&SAMPLE.replace("\"pv0\", 55", "\"pv0\", 55, \"pv1\", 0"));
        assert!(e.contains("stripes has 4 items"), "{e}");
        let e = err(&SAMPLE.replace("\"pv0\", 55", "55, \"pv0\""));
        assert!(e.contains("a name and a first extent"), "{e}");
    }

    #[test]
    fn striped_with_several_stripes_is_unsupported_by_name() {
        let t = SAMPLE.replacen(
            "stripe_count = 1\n",
            "stripe_count = 2\nstripe_size = 128\n",
            1,
        );
        let t = t.replacen("\"pv0\", 55", "\"pv0\", 55, \"pv0\", 90", 1);
        let vg = parse(&t).unwrap();
        assert_eq!(
            vg.lvs[0].segments[1].kind.describe(),
            "unsupported segment type striped (2 stripes)"
        );
    }

    #[test]
    fn missing_or_mistyped_fields_name_the_field_and_the_object() {
        let e = err(&SAMPLE.replace("pe_start = 2048\n", ""));
        assert!(e.contains("PV \"pv0\" has no pe_start"), "{e}");
        let e = err(&SAMPLE.replace("type = \"thin-pool\"", "type = 3"));
        assert!(
            e.contains("type in segment1 of LV \"pool\" is not a string"),
            "{e}"
        );
        let e = err(&SAMPLE.replace("status = [\"ALLOCATABLE\"]", "status = \"ALLOCATABLE\""));
        assert!(e.contains("not a list"), "{e}");
        let e = err(&SAMPLE.replacen("logical_volumes {", "logical_volumes = 1 x {", 1));
        assert!(e.contains("is a value, not a section"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dup = SAMPLE.replace("pool_tmeta {", "root {");
        assert!(err(&dup).contains("LV \"root\" is listed twice"));
    }

    #[test]
    fn not_vg_metadata_is_refused() {
        assert!(err("").contains("no volume group section"));
        assert!(err("contents = \"something else\"\nvg { }").contains("not LVM2"));
        assert!(err("version = 2\nvg { }").contains("version"));
        assert!(err("vg { id = \"x\" seqno = 1 }").contains("has no extent_size"));
        assert!(err("a = b").contains("neither a number nor a quoted string"));
        assert!(err("= 1").contains("expected a key"));
        assert!(err("a 1").contains("expected \"=\" or \"{\""));
        assert!(err("}").contains("expected a key"));
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet = b"{}[],=\"'#\\ \n\t0123456789-.abcpv";
        let mut seed = 0x9e37_79b9u32;
        for _ in 0..3000 {
            let mut t = Vec::new();
            for _ in 0..(seed % 200) {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                t.push(alphabet[(seed >> 24) as usize % alphabet.len()]);
            }
            let _ = parse(&String::from_utf8_lossy(&t));
        }
        // Mutations of real metadata, one byte at a time.
        let base = SAMPLE.as_bytes();
        for i in (0..base.len()).step_by(7) {
            for &b in b"{}[]\"=#" {
                let mut t = base.to_vec();
                t[i] = b;
                let _ = parse(&String::from_utf8_lossy(&t));
            }
        }
    }
}
