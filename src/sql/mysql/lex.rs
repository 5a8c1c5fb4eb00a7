//! The MySQL/MariaDB pre-lexer: the gateway's authority on where statements, strings,
//! identifiers and comments begin and end (DESIGN.md decision 3).
//!
//! It implements the server's lexical rules for the settings the gateway pins
//! (`sql_mode` without `ANSI_QUOTES` and `NO_BACKSLASH_ESCAPES`, utf8mb4): `'..'` and
//! `".."` are strings with backslash escapes and doubled quotes; backticks quote
//! identifiers; `#` comments run to the end of the line; `--` starts a comment only
//! when followed by whitespace, a control character or the end of the text; `/* */`
//! comments do not nest; `/*! */` and MariaDB's `/*M! */` are code; `/*+ */` are
//! optimizer hints. It splits the text at `;` and, for each statement, writes a
//! canonical text that `sqlparser` cannot read differently: comments become a space,
//! every string becomes one single-quoted literal with `'` and `\` doubled, `--` that
//! is not a comment becomes `- -`, words containing `$` are backtick-quoted (sqlparser
//! would read `$$ ... $$` as a string), and a space separates `@` and backticks from a
//! preceding word. The statement's tokens and an estimate of its parse tree's depth
//! come along, so that shapes sqlparser does not know can be recognised without it and
//! deep trees are refused before they are built.
//!
//! Executable comments whose version number makes MySQL and MariaDB (or two versions of
//! one) disagree on whether they run are recorded as [`Region`]s, so the classifier can
//! check the statement both with and without them. Any way the two readings could
//! disagree on where such a comment ends (a `*/` inside a string, a nested comment, a
//! `;` inside) is refused.

use crate::sql::ClassifyError;

/// The servers disagree on whether the code of an executable comment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Condition {
    /// `/*!NNNNN` with NNNNN >= 50700: MySQL runs it from version NNNNN on; MariaDB
    /// skips MySQL 5.7+ version comments.
    MySqlFrom(u32),
    /// `/*M!` without a version (or with a 5-digit one): MariaDB runs it; MySQL reads a
    /// plain comment.
    MariaDb,
    /// `/*M!NNNNNN`: MariaDB runs it from version NNNNNN on; MySQL never.
    MariaDbFrom(u32),
}

/// Canonical-text byte range of the code of a conditional executable comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Region {
    pub start: usize,
    pub end: usize,
    pub condition: Condition,
}

/// A token of the canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    /// A bare word: keyword, identifier or number (`SELECT`, `t1`, `1e5`, `0x1F`).
    Word(String),
    /// A backtick-quoted identifier, decoded.
    Ident(String),
    /// A string literal, decoded.
    Str(String),
    /// A hexadecimal or bit literal (`X'41'`, `b'01'`), as written.
    Literal,
    /// One character of punctuation or an operator.
    Punct(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub tok: Tok,
    /// Byte range in the canonical text.
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// Whether this is the bare word `keyword` (ASCII case-insensitive).
    pub fn is_word(&self, keyword: &str) -> bool {
        matches!(&self.tok, Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    pub fn is_punct(&self, ch: char) -> bool {
        self.tok == Tok::Punct(ch)
    }

    /// The word, or the quoted identifier's name.
    pub fn name(&self) -> Option<&str> {
        match &self.tok {
            Tok::Word(w) | Tok::Ident(w) => Some(w),
            _ => None,
        }
    }
}

/// One statement of the input.
#[derive(Debug, Clone)]
pub(super) struct Piece {
    /// Byte range of the statement in the input, without its `;`.
    pub start: usize,
    pub end: usize,
    pub canonical: String,
    pub tokens: Vec<Token>,
    pub regions: Vec<Region>,
    /// Optimizer hints, their text between `/*+` and `*/`.
    pub hints: Vec<String>,
    /// An upper estimate of the depth of the statement's parse tree.
    pub depth: usize,
}

fn syntax(message: impl Into<String>) -> ClassifyError {
    ClassifyError::Syntax(message.into())
}

/// Bytes of unquoted identifiers and numbers (every byte of a multi-byte UTF-8
/// character counts, as in the server's utf8mb4 identifier rules).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Words that combine two operands: each may nest the tree one level deeper.
const OPERATOR_WORDS: &[&str] = &[
    "AND", "OR", "XOR", "NOT", "IS", "LIKE", "BETWEEN", "IN", "REGEXP", "RLIKE", "DIV", "MOD",
    "COLLATE", "BINARY", "INTERVAL", "ESCAPE", "SOUNDS", "MEMBER",
];
/// Words that chain left-deep across list separators.
const SET_WORDS: &[&str] = &["UNION", "EXCEPT", "INTERSECT", "JOIN"];
/// Words that separate the arms of a CASE (flat lists in the tree).
const ARM_WORDS: &[&str] = &["WHEN", "THEN", "ELSE"];

/// Estimates tree depth from tokens: parentheses and CASE open a level; within a level
/// every operator may nest one deeper (sqlparser builds `a OR b OR c` left-deep) until
/// a `,` or a CASE arm starts a new list element; set operations never reset.
#[derive(Debug)]
struct Gauge {
    /// Per open level: depth below it, operators in its current element, set operations.
    levels: Vec<(usize, usize, usize)>,
    deepest: usize,
}

impl Gauge {
    fn new() -> Gauge {
        Gauge {
            levels: vec![(0, 0, 0)],
            deepest: 0,
        }
    }

    fn token(&mut self, tok: &Tok) {
        let word = |w: &str, list: &[&str]| list.iter().any(|k| w.eq_ignore_ascii_case(k));
        // Numbers and long names are never keywords the gauge counts.
        if let Tok::Word(w) = tok {
            if w.len() > 9 || !w.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return self.note();
            }
        }
        match tok {
            Tok::Punct('(') => self.open(),
            Tok::Word(w) if w.eq_ignore_ascii_case("CASE") => self.open(),
            Tok::Punct(')') => self.close(),
            Tok::Word(w) if w.eq_ignore_ascii_case("END") => self.close(),
            Tok::Punct(',') => self.reset(),
            Tok::Word(w) if word(w, ARM_WORDS) => self.reset(),
            Tok::Word(w) if word(w, SET_WORDS) => {
                if let Some(level) = self.levels.last_mut() {
                    level.2 += 1;
                }
            }
            Tok::Word(w) if word(w, OPERATOR_WORDS) => self.op(),
            Tok::Punct(
                '+' | '-' | '*' | '/' | '%' | '=' | '<' | '>' | '!' | '|' | '&' | '^' | '~' | ':',
            ) => self.op(),
            _ => {}
        }
        self.note();
    }

    fn note(&mut self) {
        if let Some((below, ops, sets)) = self.levels.last() {
            self.deepest = self.deepest.max(below + ops + sets);
        }
    }

    fn open(&mut self) {
        let (below, ops, sets) = self.levels.last().copied().unwrap_or_default();
        self.levels.push((below + ops + sets + 1, 0, 0));
    }

    fn close(&mut self) {
        if self.levels.len() > 1 {
            self.levels.pop();
        }
    }

    fn reset(&mut self) {
        if let Some(level) = self.levels.last_mut() {
            level.1 = 0;
        }
    }

    fn op(&mut self) {
        if let Some(level) = self.levels.last_mut() {
            level.1 += 1;
        }
    }
}

/// A statement being built.
struct Builder {
    start: usize,
    out: String,
    tokens: Vec<Token>,
    regions: Vec<Region>,
    hints: Vec<String>,
    gauge: Gauge,
    /// Input position just after the last bare word, to see whether a string follows it
    /// directly (`_utf8mb4'x'`, `N'x'`).
    word_end: Option<usize>,
}

impl Builder {
    fn new(start: usize) -> Builder {
        Builder {
            start,
            out: String::new(),
            tokens: Vec::new(),
            regions: Vec::new(),
            hints: Vec::new(),
            gauge: Gauge::new(),
            word_end: None,
        }
    }

    fn token(&mut self, tok: Tok, start: usize) {
        self.gauge.token(&tok);
        self.tokens.push(Token {
            tok,
            start,
            end: self.out.len(),
        });
    }

    fn space(&mut self) {
        self.out.push(' ');
    }

    fn last_is_word_char(&self) -> bool {
        self.out
            .bytes()
            .last()
            .is_some_and(|b| is_word_byte(b) || b == b'@')
    }

    fn finish(self, end: usize) -> Piece {
        Piece {
            start: self.start,
            end,
            canonical: self.out,
            tokens: self.tokens,
            regions: self.regions,
            hints: self.hints,
            depth: self.gauge.deepest,
        }
    }
}

/// An executable comment being read as code.
#[derive(Debug, Clone, Copy)]
struct Exec {
    /// Input position of the first `*/` after the opener: where a server that skips the
    /// comment ends it, and where the code must end too.
    raw_end: usize,
    /// Canonical start and condition, if the servers disagree on running it.
    region: Option<(usize, Condition)>,
}

/// Splits `sql` into statements at `;` and lexes each (see the module comment).
pub(super) fn split(sql: &str) -> Result<Vec<Piece>, ClassifyError> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut pieces = Vec::new();
    let mut cur = Builder::new(0);
    let mut exec: Option<Exec> = None;
    let mut i = 0;
    while i < n {
        if let Some(ex) = exec {
            if i > ex.raw_end {
                return Err(syntax(
                    "the first */ of an executable comment (/*! ... */) is inside a string, identifier or comment of its code; servers that skip the comment would end it there",
                ));
            }
            if i == ex.raw_end {
                if let Some((start, condition)) = ex.region {
                    cur.regions.push(Region {
                        start,
                        end: cur.out.len(),
                        condition,
                    });
                }
                cur.space();
                exec = None;
                i += 2;
                continue;
            }
        }
        let c = b[i];
        match c {
            b'\'' | b'"' => {
                let (value, next) = lex_string(b, i)?;
                let adjacent_word = cur.word_end == Some(i);
                let introducer = adjacent_word
                    && cur.tokens.last().is_some_and(|t| match &t.tok {
                        Tok::Word(w) => {
                            w.starts_with('_') || (c == b'\'' && w.eq_ignore_ascii_case("n"))
                        }
                        _ => false,
                    });
                if adjacent_word && !introducer {
                    cur.space();
                }
                let start = cur.out.len();
                push_string(&mut cur.out, &value);
                cur.token(Tok::Str(value), start);
                cur.word_end = None;
                i = next;
            }
            b'`' => {
                let (name, next) = lex_quoted_ident(b, i)?;
                if cur.last_is_word_char() {
                    cur.space();
                }
                let start = cur.out.len();
                cur.out.push_str(&sql[i..next]);
                cur.token(Tok::Ident(name), start);
                cur.word_end = None;
                i = next;
            }
            b'#' => {
                i = line_end(b, i);
                cur.space();
            }
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2).is_none_or(|&c| c <= b' ' || c == 0x7f) =>
            {
                i = line_end(b, i);
                cur.space();
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                if exec.is_some() {
                    return Err(syntax(
                        "a comment inside an executable comment (/*! ... */) is not allowed: servers differ on where it ends",
                    ));
                }
                i = comment(sql, i, &mut cur, &mut exec)?;
            }
            b';' => {
                if exec.is_some() {
                    return Err(syntax(
                        "a ; inside an executable comment (/*! ... */) is not allowed",
                    ));
                }
                let done = std::mem::replace(&mut cur, Builder::new(i + 1));
                pieces.push(done.finish(i));
                i += 1;
            }
            c if is_word_byte(c) => {
                let mut j = i;
                while j < n && is_word_byte(b[j]) {
                    j += 1;
                }
                let word = &sql[i..j];
                let quote = b.get(j) == Some(&b'\'');
                let hex = quote && word.eq_ignore_ascii_case("x");
                let bits = quote && word.eq_ignore_ascii_case("b");
                if hex || bits {
                    // X'..' and B'..' hold digits only: no escapes, so every reading agrees.
                    let close = b[j + 1..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| j + 1 + p)
                        .ok_or_else(|| syntax("unterminated hexadecimal or bit literal"))?;
                    let digits = &b[j + 1..close];
                    let ok = if hex {
                        digits.iter().all(u8::is_ascii_hexdigit)
                    } else {
                        digits.iter().all(|d| matches!(d, b'0' | b'1'))
                    };
                    if !ok {
                        return Err(syntax(format!(
                            "invalid {} literal {}",
                            if hex { "hexadecimal" } else { "bit" },
                            &sql[i..=close]
                        )));
                    }
                    let start = cur.out.len();
                    cur.out.push_str(&sql[i..=close]);
                    cur.token(Tok::Literal, start);
                    cur.word_end = None;
                    i = close + 1;
                    continue;
                }
                let start = cur.out.len();
                if word.contains('$') {
                    // sqlparser reads `$tag$ ... $tag$` as a dollar-quoted string; the
                    // server reads identifiers. Quoting makes them identifiers for both.
                    cur.out.push('`');
                    cur.out.push_str(word);
                    cur.out.push('`');
                    cur.token(Tok::Ident(word.to_owned()), start);
                    cur.word_end = None;
                } else {
                    cur.out.push_str(word);
                    cur.token(Tok::Word(word.to_owned()), start);
                    cur.word_end = Some(j);
                }
                i = j;
            }
            b'@' => {
                if cur.last_is_word_char() && !cur.out.ends_with('@') {
                    cur.space();
                }
                let start = cur.out.len();
                cur.out.push('@');
                cur.token(Tok::Punct('@'), start);
                cur.word_end = None;
                i += 1;
            }
            b'-' => {
                // `--` not followed by whitespace is two minus signs for the server; a
                // space keeps sqlparser from reading a comment.
                let start = cur.out.len();
                cur.out.push('-');
                cur.token(Tok::Punct('-'), start);
                if b.get(i + 1) == Some(&b'-') {
                    cur.space();
                }
                cur.word_end = None;
                i += 1;
            }
            c if c.is_ascii_whitespace() || c == 0x0b => {
                cur.out.push(c as char);
                cur.word_end = None;
                i += 1;
            }
            0 => return Err(syntax("statement contains a NUL byte")),
            c => {
                // Any other ASCII byte (non-ASCII bytes are word bytes).
                let start = cur.out.len();
                cur.out.push(c as char);
                cur.token(Tok::Punct(c as char), start);
                cur.word_end = None;
                i += 1;
            }
        }
    }
    if exec.is_some() {
        return Err(syntax("unterminated executable comment"));
    }
    pieces.push(cur.finish(n));
    Ok(pieces)
}

/// Position of the `\n` ending the line comment starting at `i` (or the end).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p)
}

/// Reads the `'`- or `"`-quoted string at `i`: its decoded value and the position after it.
fn lex_string(b: &[u8], i: usize) -> Result<(String, usize), ClassifyError> {
    let quote = b[i];
    let mut value = Vec::new();
    let mut j = i + 1;
    loop {
        let Some(&c) = b.get(j) else {
            return Err(syntax("unterminated string literal"));
        };
        if c == b'\\' {
            let Some(&e) = b.get(j + 1) else {
                return Err(syntax("unterminated string literal"));
            };
            match e {
                b'0' => value.push(0),
                b'b' => value.push(8),
                b'n' => value.push(b'\n'),
                b'r' => value.push(b'\r'),
                b't' => value.push(b'\t'),
                b'Z' => value.push(26),
                // Kept with their backslash (LIKE patterns).
                b'%' | b'_' => value.extend_from_slice(&[b'\\', e]),
                // Includes \\, \', \" and the lead byte of a multi-byte character,
                // whose continuation bytes follow as ordinary bytes.
                other => value.push(other),
            }
            j += 2;
        } else if c == quote {
            if b.get(j + 1) == Some(&quote) {
                value.push(quote);
                j += 2;
            } else {
                j += 1;
                break;
            }
        } else {
            value.push(c);
            j += 1;
        }
    }
    let value = String::from_utf8(value)
        .map_err(|_| syntax("string literal is not valid UTF-8 after unescaping"))?;
    Ok((value, j))
}

/// Writes `value` as a single-quoted literal with `'` and `\` doubled.
fn push_string(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('\'');
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// Reads the backtick-quoted identifier at `i`: its name and the position after it.
fn lex_quoted_ident(b: &[u8], i: usize) -> Result<(String, usize), ClassifyError> {
    let mut name = Vec::new();
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err(syntax("unterminated quoted identifier")),
            Some(b'`') if b.get(j + 1) == Some(&b'`') => {
                name.push(b'`');
                j += 2;
            }
            Some(b'`') => return Ok((String::from_utf8_lossy(&name).into_owned(), j + 1)),
            Some(&c) => {
                name.push(c);
                j += 1;
            }
        }
    }
}

/// Position of the first `*/` at or after `from`.
fn find_close(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(2)
        .position(|w| w == b"*/")
        .map(|p| from + p)
}

/// Handles the `/*` at `i`: a plain comment, an optimizer hint, or the opener of an
/// executable comment. Returns the position to continue at.
fn comment(
    sql: &str,
    i: usize,
    cur: &mut Builder,
    exec: &mut Option<Exec>,
) -> Result<usize, ClassifyError> {
    let b = sql.as_bytes();
    let body = i + 2;
    let raw_end = find_close(b, body).ok_or_else(|| syntax("unterminated comment"))?;
    cur.word_end = None;
    let (mariadb, code) = match (b.get(body), b.get(body + 1)) {
        (Some(b'!'), _) => (false, body + 1),
        (Some(b'M'), Some(b'!')) => (true, body + 2),
        (Some(b'+'), _) => {
            // MySQL's hint scanner honours quotes inside a hint, MariaDB and the main
            // lexer do not: with quotes they could disagree on where the hint ends.
            let text = &sql[body + 1..raw_end];
            if text.contains(['\'', '"', '`']) || text.contains("/*") {
                return Err(syntax(
                    "optimizer hints (/*+ ... */) with quotes or comments inside are not allowed",
                ));
            }
            cur.hints.push(text.trim().to_owned());
            cur.space();
            return Ok(raw_end + 2);
        }
        _ => {
            cur.space();
            return Ok(raw_end + 2);
        }
    };
    let code = code.min(raw_end);
    if find_nested_open(&b[code..raw_end]) {
        return Err(syntax(
            "a comment inside an executable comment (/*! ... */) is not allowed: servers differ on where it ends",
        ));
    }
    let digits = b[code..raw_end]
        .iter()
        .take(7)
        .take_while(|c| c.is_ascii_digit())
        .count();
    let version = || -> u32 {
        b[code..code + digits]
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'))
    };
    let (condition, skip) = match (mariadb, digits) {
        // Not a version comment: code for every server.
        (false, 0..=4) => (None, 0),
        (false, 5) if version() < 50700 => (None, 5),
        (false, 5) => (Some(Condition::MySqlFrom(version())), 5),
        (true, 0..=4) => (Some(Condition::MariaDb), 0),
        (true, 5) => (Some(Condition::MariaDb), 5),
        (true, 6) => (Some(Condition::MariaDbFrom(version())), 6),
        _ => {
            return Err(syntax(
                "an executable comment with a version of 6 or more digits is read differently by MySQL and MariaDB",
            ))
        }
    };
    cur.space();
    *exec = Some(Exec {
        raw_end,
        region: condition.map(|c| (cur.out.len(), c)),
    });
    Ok(code + skip)
}

fn find_nested_open(body: &[u8]) -> bool {
    body.windows(2).any(|w| w == b"/*")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(sql: &str) -> Vec<String> {
        split(sql)
            .unwrap()
            .into_iter()
            .map(|p| p.canonical.trim().to_owned())
            .collect()
    }

    #[test]
    fn strings_are_rewritten_single_quoted() {
        assert_eq!(
            canon(r#"SELECT "a'b\"c", 'x\\y''z'"#),
            [r#"SELECT 'a''b"c', 'x\\y''z'"#]
        );
        assert_eq!(
            canon(r"SELECT 'a\';DELETE FROM t;--'"),
            [r"SELECT 'a'';DELETE FROM t;--'"]
        );
        assert_eq!(
            canon(r"SELECT _utf8mb4'x', N'y', X'41', b'01'"),
            [r"SELECT _utf8mb4'x', N'y', X'41', b'01'"]
        );
        assert_eq!(canon(r#"SELECT a"x""#), [r"SELECT a 'x'"]);
    }

    #[test]
    fn comments_and_double_dash() {
        assert_eq!(canon("SELECT 1--1"), ["SELECT 1- -1"]);
        assert_eq!(
            canon("SELECT 1 -- x; DELETE\nFROM t"),
            ["SELECT 1  \nFROM t"]
        );
        assert_eq!(canon("SELECT 1 --x; DELETE FROM t").len(), 2);
        assert_eq!(canon("SELECT 1 # x; y\n, 2"), ["SELECT 1  \n, 2"]);
        assert_eq!(canon("SELECT 1 /* ; */ , 2"), ["SELECT 1   , 2"]);
        assert_eq!(canon("SELECT 1 --"), ["SELECT 1"]);
        assert_eq!(canon("SELECT $$ FROM t"), ["SELECT `$$` FROM t"]);
    }

    #[test]
    fn executable_comments() {
        assert_eq!(canon("/*!40101 SET NAMES utf8 */"), ["SET NAMES utf8"]);
        let p = &split("SELECT 1 /*!80000 , 2 */ /*M! , 3 */ /*M!100500 , 4 */").unwrap()[0];
        assert_eq!(p.regions.len(), 3);
        assert_eq!(
            p.regions.iter().map(|r| r.condition).collect::<Vec<_>>(),
            [
                Condition::MySqlFrom(80000),
                Condition::MariaDb,
                Condition::MariaDbFrom(100500)
            ]
        );
        assert!(split("SELECT /*! 'a */' */ 1").is_err());
        assert!(split("SELECT /*! 1 /* x */ */").is_err());
        assert!(split("SELECT /*! 1; DELETE FROM t */").is_err());
        assert!(split("SELECT /*!800001 1 */").is_err());
        assert!(split("SELECT /*! 1 # */\n */").is_err());
    }

    #[test]
    fn unterminated() {
        for sql in [
            "SELECT 'a",
            "SELECT \"a\\\"",
            "SELECT `a",
            "SELECT /* a",
            "SELECT /*! 1",
            "SELECT X'4",
        ] {
            assert!(matches!(split(sql), Err(ClassifyError::Syntax(_))), "{sql}");
        }
    }

    #[test]
    fn depth_estimate() {
        let p = &split(&format!("SELECT 1 IN ({})", vec!["1"; 1000].join(","))).unwrap()[0];
        assert!(p.depth < 5, "{}", p.depth);
        let p = &split(&format!("SELECT {}", vec!["a"; 1000].join(" OR "))).unwrap()[0];
        assert!(p.depth >= 999, "{}", p.depth);
        let p = &split(&format!("SELECT {}1{}", "(".repeat(300), ")".repeat(300))).unwrap()[0];
        assert!(p.depth >= 300, "{}", p.depth);
    }
}
