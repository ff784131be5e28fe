//! List queries as Image Streamer takes them: `start`, `count`, `filter` and `sort`, parsed
//! and applied to JSON members. Pure.
//!
//! Filters: `FIELD OP VALUE`, joined by `AND` / `OR` (AND binds tighter), the whole
//! optionally in double quotes as HPE's SDKs send it (`"name='x'"`). OP is `=` (`==`),
//! `<>` (`!=`), `<`, `<=`, `>`, `>=` or `matches` (a pattern with `%` for any run of
//! characters); `=`, `<>` and `matches` ignore case, as OneView's do (HPE's SDK's `get_by`
//! relies on it). VALUE is `'quoted'`, `"quoted"` or a bare word. FIELD may name a nested
//! field with dots (`associatedResource.resourceName`). Several `filter` parameters must
//! all hold. Sort: `FIELD:ascending` or `FIELD:descending` (`asc`, `desc`),
//! several separated by commas.

use std::cmp::Ordering;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("start {0:?} is not a number of 0 or more")]
    Start(String),
    #[error("count {0:?} is not a number (-1 or absent: all)")]
    Count(String),
    #[error("filter {filter:?}: {detail}")]
    Filter { filter: String, detail: String },
    #[error("sort {sort:?}: {detail}")]
    Sort { sort: String, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Matches,
}

/// `field op value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub field: String,
    pub op: Op,
    pub value: String,
}

/// Alternatives (OR) of conjunctions (AND) of conditions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    pub any_of: Vec<Vec<Condition>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: String,
    pub descending: bool,
}

/// A parsed list query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    pub start: usize,
    /// None: all from `start`.
    pub count: Option<usize>,
    /// All must hold.
    pub filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub members: Vec<Value>,
    /// How many matched the filters in all.
    pub total: usize,
    pub start: usize,
}

impl ListQuery {
    /// From the query string's values (each `filter` given separately).
    pub fn parse(
        start: Option<&str>,
        count: Option<&str>,
        filters: &[String],
        sort: Option<&str>,
    ) -> Result<ListQuery, QueryError> {
        let start = match start.map(str::trim).filter(|s| !s.is_empty()) {
            None => 0,
            Some(s) => s.parse().map_err(|_| QueryError::Start(s.into()))?,
        };
        let count = match count.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(c) => match c.parse::<i64>() {
                Ok(n) if n < 0 => None,
                Ok(n) => Some(usize::try_from(n).map_err(|_| QueryError::Count(c.into()))?),
                Err(_) => return Err(QueryError::Count(c.into())),
            },
        };
        let filters = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_filter(f))
            .collect::<Result<_, _>>()?;
        let sort = match sort.map(str::trim).filter(|s| !s.is_empty()) {
            None => Vec::new(),
            Some(s) => parse_sort(s)?,
        };
        Ok(ListQuery {
            start,
            count,
            filters,
            sort,
        })
    }

    /// Filters, sorts and pages `items`.
    pub fn apply(&self, items: Vec<Value>) -> Page {
        let mut m: Vec<Value> = items
            .into_iter()
            .filter(|v| self.filters.iter().all(|f| f.holds(v)))
            .collect();
        if !self.sort.is_empty() {
            m.sort_by(|a, b| {
                for k in &self.sort {
                    let o = compare_fields(lookup(a, &k.field), lookup(b, &k.field));
                    let o = if k.descending { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
        }
        let total = m.len();
        let members: Vec<Value> = m
            .into_iter()
            .skip(self.start)
            .take(self.count.unwrap_or(usize::MAX))
            .collect();
        Page {
            members,
            total,
            start: self.start,
        }
    }
}

impl Filter {
    pub fn holds(&self, v: &Value) -> bool {
        self.any_of.iter().any(|all| all.iter().all(|c| c.holds(v)))
    }
}

impl Condition {
    pub fn holds(&self, v: &Value) -> bool {
        let Some(field) = lookup(v, &self.field) else {
            return self.op == Op::Ne;
        };
        let text = scalar_text(field);
        match self.op {
            // Case-insensitive, as OneView's filters are (HPE's SDK relies on it in get_by).
            Op::Eq => text.to_lowercase() == self.value.to_lowercase(),
            Op::Ne => text.to_lowercase() != self.value.to_lowercase(),
            Op::Matches => like(&text.to_lowercase(), &self.value.to_lowercase()),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let o = match (text.parse::<f64>(), self.value.parse::<f64>()) {
                    (Ok(a), Ok(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
                    _ => text.as_str().cmp(self.value.as_str()),
                };
                match self.op {
                    Op::Lt => o == Ordering::Less,
                    Op::Le => o != Ordering::Greater,
                    Op::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                }
            }
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn compare_fields(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(x), Some(y)) => scalar_text(x)
            .to_lowercase()
            .cmp(&scalar_text(y).to_lowercase())
            .then_with(|| scalar_text(x).cmp(&scalar_text(y))),
    }
}

/// SQL LIKE with `%` only (no escapes): does `text` match `pattern`?
fn like(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return text == pattern;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some(&(i, c)) = it.peek() {
        if c.is_whitespace() {
            it.next();
        } else if c == '\'' || c == '"' {
            it.next();
            let mut v = String::new();
            let mut closed = false;
            while let Some((_, d)) = it.next() {
                if d == c {
                    // A doubled quote inside is one quote.
                    if it.peek().map(|&(_, e)| e) == Some(c) {
                        it.next();
                        v.push(c);
                        continue;
                    }
                    closed = true;
                    break;
                }
                v.push(d);
            }
            if !closed {
                return Err(format!("the quote at {i} is not closed"));
            }
            out.push(Token::Quoted(v));
        } else if matches!(c, '=' | '<' | '>' | '!') {
            it.next();
            let next = it.peek().map(|&(_, d)| d);
            let op = match (c, next) {
                ('=', Some('=')) => Some(Op::Eq),
                ('!', Some('=')) => Some(Op::Ne),
                ('<', Some('>')) => Some(Op::Ne),
                ('<', Some('=')) => Some(Op::Le),
                ('>', Some('=')) => Some(Op::Ge),
                _ => None,
            };
            match op {
                Some(op) => {
                    it.next();
                    out.push(Token::Op(op));
                }
                None => out.push(Token::Op(match c {
                    '=' => Op::Eq,
                    '<' => Op::Lt,
                    '>' => Op::Gt,
                    _ => return Err(format!("'!' at {i} must be followed by '='")),
                })),
            }
        } else {
            let mut w = String::new();
            while let Some(&(_, d)) = it.peek() {
                if d.is_whitespace() || matches!(d, '=' | '<' | '>' | '!' | '\'' | '"') {
                    break;
                }
                w.push(d);
                it.next();
            }
            if w.eq_ignore_ascii_case("matches") {
                out.push(Token::Op(Op::Matches));
            } else {
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

fn parse_filter(raw: &str) -> Result<Filter, QueryError> {
    let fail = |detail: String| QueryError::Filter {
        filter: raw.into(),
        detail,
    };
    let mut s = raw.trim();
    // HPE's SDKs wrap the whole filter in double quotes.
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s = &s[1..s.len() - 1];
    }
    let toks = tokens(s).map_err(fail)?;
    let mut f = Filter::default();
    let mut all = Vec::new();
    let mut i = 0;
    loop {
        let field = match toks.get(i) {
            Some(Token::Word(w)) if is_field(w) => w.clone(),
            Some(t) => return Err(fail(format!("expected a field name, found {t:?}"))),
            None => return Err(fail("expected a field name, found the end".into())),
        };
        let op = match toks.get(i + 1) {
            Some(Token::Op(op)) => *op,
            other => {
                return Err(fail(format!(
                    "expected an operator (=, <>, <, >, matches) after {field:?}, found {other:?}"
                )))
            }
        };
        let value = match toks.get(i + 2) {
            Some(Token::Word(w) | Token::Quoted(w)) => w.clone(),
            other => {
                return Err(fail(format!(
                    "expected a value after the operator, found {other:?}"
                )))
            }
        };
        all.push(Condition { field, op, value });
        i += 3;
        match toks.get(i) {
            None => break,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("or") => {
                f.any_of.push(std::mem::take(&mut all));
                i += 1;
            }
            Some(t) => return Err(fail(format!("expected AND, OR or the end, found {t:?}"))),
        }
    }
    f.any_of.push(all);
    Ok(f)
}

fn is_field(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn parse_sort(raw: &str) -> Result<Vec<SortKey>, QueryError> {
    let fail = |detail: String| QueryError::Sort {
        sort: raw.into(),
        detail,
    };
    let s = raw.trim().trim_matches('"');
    s.split(',')
        .map(|k| {
            let k = k.trim();
            let (field, dir) = k.split_once(':').unwrap_or((k, "ascending"));
            if !is_field(field) {
                return Err(fail(format!("{field:?} is not a field name")));
            }
            let descending = match dir.trim().to_ascii_lowercase().as_str() {
                "ascending" | "asc" => false,
                "descending" | "desc" => true,
                d => return Err(fail(format!("{d:?}: expected ascending or descending"))),
            };
            Ok(SortKey {
                field: field.into(),
                descending,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn items() -> Vec<Value> {
        vec![
            json!({"name": "beta", "planType": "deploy", "n": 10}),
            json!({"name": "Alpha", "planType": "capture", "n": 2}),
            json!({"name": "gamma", "planType": "general", "n": 33, "x": {"y": "z"}}),
        ]
    }

    fn q(filters: &[&str], sort: Option<&str>) -> ListQuery {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        ListQuery::parse(None, None, &f, sort).unwrap()
    }

    fn names(p: &Page) -> Vec<&str> {
        p.members
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn filters_as_hpes_sdks_send_them() {
        assert_eq!(
            names(&q(&["\"name='beta'\""], None).apply(items())),
            ["beta"]
        );
        assert_eq!(names(&q(&["name=beta"], None).apply(items())), ["beta"]);
        // Case-insensitive, as HPE's SDK's get_by expects.
        assert_eq!(names(&q(&["name='ALPHA'"], None).apply(items())), ["Alpha"]);
        assert_eq!(
            names(&q(&["name<>'ALPHA'"], None).apply(items())),
            ["beta", "gamma"]
        );
        assert_eq!(
            names(&q(&["planType<>'deploy'"], None).apply(items())),
            ["Alpha", "gamma"]
        );
        assert_eq!(
            names(&q(&["name matches 'AL%'"], None).apply(items())),
            ["Alpha"]
        );
        assert_eq!(
            names(&q(&["n > 5"], None).apply(items())),
            ["beta", "gamma"]
        );
        assert_eq!(names(&q(&["x.y = 'z'"], None).apply(items())), ["gamma"]);
        assert_eq!(
            names(&q(&["name='beta' OR name='gamma' AND n=33"], None).apply(items())),
            ["beta", "gamma"]
        );
        // Two filter parameters: both must hold.
        assert!(q(&["name='beta'", "n=2"], None)
            .apply(items())
            .members
            .is_empty());
        // An unknown field matches nothing.
        assert!(q(&["colour='red'"], None).apply(items()).members.is_empty());
    }

    #[test]
    fn bad_filters_and_sorts_say_what_is_wrong() {
        let e = ListQuery::parse(None, None, &["name 'x'".into()], None).unwrap_err();
        assert!(e.to_string().contains("operator"), "{e}");
        let e = ListQuery::parse(None, None, &["name='x".into()], None).unwrap_err();
        assert!(e.to_string().contains("not closed"), "{e}");
        let e = ListQuery::parse(None, None, &[], Some("name:sideways")).unwrap_err();
        assert!(e.to_string().contains("ascending"), "{e}");
        assert!(ListQuery::parse(Some("-1"), None, &[], None).is_err());
        assert!(ListQuery::parse(None, Some("many"), &[], None).is_err());
    }

    #[test]
    fn sorts_and_pages() {
        let p = q(&[], Some("name:ascending")).apply(items());
        assert_eq!(names(&p), ["Alpha", "beta", "gamma"]);
        let p = q(&[], Some("n:descending")).apply(items());
        assert_eq!(names(&p), ["gamma", "beta", "Alpha"]);
        let page = ListQuery::parse(Some("1"), Some("1"), &[], Some("name:asc"))
            .unwrap()
            .apply(items());
        assert_eq!((names(&page), page.total, page.start), (vec!["beta"], 3, 1));
        let all = ListQuery::parse(None, Some("-1"), &[], None).unwrap();
        assert_eq!(all.apply(items()).members.len(), 3);
        let past = ListQuery::parse(Some("9"), None, &[], None)
            .unwrap()
            .apply(items());
        assert_eq!((past.members.len(), past.total), (0, 3));
    }

    #[test]
    fn like_patterns() {
        assert!(like("hello world", "hello%"));
        assert!(like("hello world", "%world"));
        assert!(like("hello world", "h%o w%d"));
        assert!(!like("hello", "h%x%"));
        assert!(!like("ab", "a%b%b"));
        assert!(like("abc", "abc"));
    }
}
