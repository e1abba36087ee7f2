//! YAML syntax and type errors rewritten for the person who edits the file: one headline
//! `file:line:column: what is wrong; what to do`, at the line where the mistake is, then
//! the parser's snippet of the surroundings.
//!
//! The parser (serde-saphyr) reports where *it* noticed the problem, in its own words: a
//! tab one line early, an unclosed `{` several lines later, "set DuplicateKeyPolicy in
//! Options". So the text is scanned for the common mistakes first (a tab in the
//! indentation, an unclosed flow collection, a line indented under a key that already has
//! a value) and the parser's message is translated where it is precise (duplicate key,
//! number, unknown key, missing `:`). Touches nothing but the text and the error it is
//! given.

use serde_saphyr::Error;

/// A syntax or type error, located and explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// 1-based line of the mistake.
    pub line: u64,
    /// 1-based column of the mistake.
    pub column: u64,
    /// What is wrong and what to do, in one line.
    pub message: String,
    /// The parser's rendering of the surroundings (may be empty).
    pub snippet: String,
}

/// Explain `err`, which the parser raised for `text` (named `origin` in the snippet).
pub fn explain(text: &str, origin: &str, err: &Error) -> Explained {
    let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
    let lines: Vec<&str> = text.lines().collect();
    let reported = Reported {
        message: bare_message(&err.without_snippet().to_string()),
        lines: &lines,
        line,
        column,
    };
    let (line, column, message) = scanned_mistake(text, &lines, line)
        .or_else(|| reported.translated())
        .unwrap_or_else(|| (line.max(1), column.max(1), reported.message.clone()));
    Explained {
        line,
        column,
        message,
        snippet: snippet(&lines, origin, line, column),
    }
}

/// A mistake found by reading the text, where it is (line, column, what to do): an empty
/// file, a tab in the indentation, an unclosed flow collection or quote, a line indented
/// under a key that already has a value (up to the line after the one the parser reported,
/// `reported_line`; 0: anywhere).
fn scanned_mistake(text: &str, lines: &[&str], reported_line: u64) -> Option<(u64, u64, String)> {
    if text.trim().is_empty() {
        return Some((
            1,
            1,
            "the file is empty; start from the shipped gateway.yaml".into(),
        ));
    }
    if let Some((l, c)) = tab_in_indentation(lines) {
        return Some((
            l,
            c,
            "a tab in the indentation; YAML indents with spaces only: replace the tab with spaces"
                .into(),
        ));
    }
    if let Some((l, c, open)) = unclosed_flow(lines) {
        let message = match open {
            '{' | '[' => {
                let close = if open == '{' { '}' } else { ']' };
                format!("this `{open}` is never closed; add `{close}` where the entry ends (usually the end of this line)")
            }
            q => format!("this `{q}` quote is never closed on its line; add the closing `{q}`"),
        };
        return Some((l, c, message));
    }
    let limit = if reported_line == 0 {
        lines.len() as u64
    } else {
        reported_line + 1
    };
    indented_under_value(lines, limit).map(|(l, c, parent, pl)| {
        (
            l,
            c,
            format!("this line is indented deeper than `{parent}:` on line {pl}, which already has a value; indent it like that line"),
        )
    })
}

/// What the parser said and where, with the text it said it about.
struct Reported<'a> {
    /// Its message without location ([`bare_message`]).
    message: String,
    /// The text, by line.
    lines: &'a [&'a str],
    /// 1-based line it reported (0: none).
    line: u64,
    /// 1-based column it reported (0: none).
    column: u64,
}

impl Reported<'_> {
    /// The parser's message in the user's terms where it is precise, at its location:
    /// a duplicate key, a number out of range, a missing `:`, an unknown key.
    fn translated(&self) -> Option<(u64, u64, String)> {
        let message = self
            .duplicate_key()
            .or_else(|| self.not_a_whole_number())
            .or_else(|| self.missing_colon())
            .or_else(|| self.unknown_field())?;
        Some((self.line, self.column, message))
    }

    /// `duplicate mapping key`: where the key was first set.
    fn duplicate_key(&self) -> Option<String> {
        let key = self
            .message
            .strip_prefix("duplicate mapping key: ")
            .map(|r| r.split(',').next().unwrap_or(r).trim().to_string())?;
        Some(
            match first_occurrence(self.lines, self.line, self.column, &key) {
                Some(f) => {
                    format!("`{key}` is set twice, on line {f} and on this line; keep one of them")
                }
                None => format!("`{key}` is set twice in the same section; keep one of them"),
            },
        )
    }

    /// `invalid u16` and the like: the range, and the digits when separators were written.
    fn not_a_whole_number(&self) -> Option<String> {
        let range = int_range(self.message.strip_prefix("invalid ")?.trim())?;
        let value = value_at(self.lines, self.line, self.column);
        let key = key_before(self.lines, self.line, self.column);
        let hint = if value.contains([',', '.', '_', ' ', '\''])
            && value.chars().any(|c| c.is_ascii_digit())
        {
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            format!("; write digits only, without separators: {key}{digits}")
        } else {
            String::new()
        };
        Some(format!(
            "`{value}` is not a whole number from {range}{hint}"
        ))
    }

    /// A key without its `:`.
    fn missing_colon(&self) -> Option<String> {
        let raw = &self.message;
        (raw.starts_with("simple key expected ':'") || raw.contains("could not find expected ':'"))
            .then(|| {
                "a `:` is missing after the key; write `key: value` (with a space after the colon)"
                    .into()
            })
    }

    /// `unknown field`: the parser's message, with the nearest known key if one is close.
    fn unknown_field(&self) -> Option<String> {
        let rest = self.message.strip_prefix("unknown field `")?;
        let unknown = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest
            .split_once("expected one of ")
            .map(|(_, list)| list.split(", ").map(str::trim).collect())
            .or_else(|| {
                rest.split_once("expected `")
                    .map(|(_, k)| vec![k.trim_end_matches('`')])
            })
            .unwrap_or_default();
        let near = expected
            .iter()
            .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3))
            .min();
        Some(match near {
            Some((_, k)) => format!("{}; did you mean `{k}`?", self.message),
            None => self.message.clone(),
        })
    }
}

/// The parser's message without its `error: line N column M: ` prefix or its
/// ` at line N, column M` suffix.
fn bare_message(s: &str) -> String {
    let s = s.trim();
    let mut s = s.strip_prefix("error: ").unwrap_or(s).to_string();
    if let Some(rest) = s.strip_prefix("line ") {
        if let Some((_, after)) = rest.split_once(" column ") {
            let after = after.trim_start_matches(|c: char| c.is_ascii_digit());
            s = after.trim_start_matches(':').trim().to_string();
        }
    }
    if let Some(p) = s.rfind(" at line ") {
        if s[p..].contains(", column ") {
            s.truncate(p);
        }
    }
    s
}

/// The offending line with a caret under the column, as `  --> file:L:C` and `L | text`.
fn snippet(lines: &[&str], origin: &str, line: u64, column: u64) -> String {
    let Some(text) = usize::try_from(line)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| lines.get(i))
    else {
        return String::new();
    };
    let num = line.to_string();
    let pad = " ".repeat(num.len());
    let shown: String = text
        .chars()
        .map(|c| if c == '\t' { '→' } else { c })
        .collect();
    let caret = " ".repeat(usize::try_from(column).unwrap_or(1).saturating_sub(1));
    format!("{pad}--> {origin}:{line}:{column}\n{num} | {shown}\n{pad} | {caret}^")
}

/// The first tab in the leading whitespace of a line (outside block scalars, which the
/// gateway's schema does not use).
fn tab_in_indentation(lines: &[&str]) -> Option<(u64, u64)> {
    lines.iter().enumerate().find_map(|(i, l)| {
        let lead: &str = &l[..l.len() - l.trim_start_matches([' ', '\t']).len()];
        lead.find('\t')
            .map(|c| (i as u64 + 1, c as u64 + 1))
            .filter(|_| !is_blank_or_comment(l))
    })
}

/// A `{` or `[` still open at the end of its line when the next content line is not
/// indented deeper (so it cannot be a continuation): (line, column, bracket).
fn unclosed_flow(lines: &[&str]) -> Option<(u64, u64, char)> {
    let mut stack: Vec<(u64, u64, char, usize)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let indent = indentation(l);
        if let Some(&(_, _, _, open_indent)) = stack.first() {
            if !is_blank_or_comment(l) && indent <= open_indent {
                let (line, col, b, _) = stack[stack.len() - 1];
                return Some((line, col, b));
            }
        }
        let mut quote: Option<(char, usize)> = None;
        for (c, ch) in l.char_indices() {
            match (quote, ch) {
                (Some((q, _)), x) if x == q => quote = None,
                (Some(_), _) => {}
                // A quote opens a scalar only where a value starts (not in `it's`).
                (None, '\'' | '"') if c == 0 || l[..c].ends_with([' ', '[', '{', ',']) => {
                    quote = Some((ch, c));
                }
                (None, '#') if c == 0 || l[..c].ends_with([' ', '\t']) => break,
                (None, '{' | '[') => stack.push((i as u64 + 1, c as u64 + 1, ch, indent)),
                (None, '}' | ']') => {
                    stack.pop();
                }
                _ => {}
            }
        }
        if let Some((q, c)) = quote {
            return Some((i as u64 + 1, c as u64 + 1, q));
        }
    }
    stack.last().map(|&(l, c, b, _)| (l, c, b))
}

/// A line indented deeper than the key above it although that key already has a scalar
/// value (`baud: 38400` then `    data_bits: 8`): (line, column, parent key, parent line).
fn indented_under_value(lines: &[&str], limit: u64) -> Option<(u64, u64, String, u64)> {
    let mut prev: Option<(usize, usize, String, bool)> = None; // (line idx, key column, key, has scalar)
    for (i, l) in lines.iter().enumerate().take(limit as usize) {
        if is_blank_or_comment(l) {
            continue;
        }
        let indent = indentation(l);
        if let Some((pi, kcol, key, true)) = &prev {
            if indent > *kcol {
                return Some((i as u64 + 1, indent as u64 + 1, key.clone(), *pi as u64 + 1));
            }
        }
        prev = key_line(l).map(|(kcol, key, scalar)| (i, kcol, key, scalar));
    }
    None
}

/// `key: value` on a block line: (column of the key, the key, value is a plain scalar).
fn key_line(l: &str) -> Option<(usize, String, bool)> {
    let mut kcol = indentation(l);
    let mut rest = &l[kcol..];
    while let Some(r) = rest.strip_prefix("- ") {
        kcol += 2;
        rest = r;
    }
    let rest = strip_comment(rest);
    let (key, value) = rest
        .split_once(": ")
        .or_else(|| rest.strip_suffix(':').map(|k| (k, "")))?;
    if key.contains(['{', '[', '"', '\'']) {
        return None;
    }
    let v = value.trim();
    let scalar = !v.is_empty() && !v.starts_with(['|', '>', '{', '[', '&', '!', '*']);
    Some((kcol, key.trim().to_string(), scalar))
}

/// Where `key:` was first set in the same mapping as the one at (`line`, `column`).
fn first_occurrence(lines: &[&str], line: u64, column: u64, key: &str) -> Option<u64> {
    let idx = usize::try_from(line).ok()?.checked_sub(1)?;
    let here = lines.get(idx)?;
    let col = usize::try_from(column)
        .ok()?
        .saturating_sub(1)
        .min(here.len());
    let pat = format!("{key}:");
    // A flow mapping: the same line, before the second occurrence.
    if here.get(..col).is_some_and(|before| {
        before
            .match_indices(&pat)
            .any(|(p, _)| p == 0 || before[..p].ends_with([' ', '{', ',']))
    }) {
        return Some(line);
    }
    let indent = indentation(here);
    for j in (0..idx).rev() {
        let l = lines[j];
        if is_blank_or_comment(l) {
            continue;
        }
        let ind = indentation(l);
        if ind < indent {
            break;
        }
        if ind == indent && key_line(l).is_some_and(|(_, k, _)| k == key) {
            return Some(j as u64 + 1);
        }
    }
    None
}

/// The plain value starting at (`line`, `column`), up to a comment.
fn value_at(lines: &[&str], line: u64, column: u64) -> String {
    let Some(l) = usize::try_from(line)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| lines.get(i))
    else {
        return String::new();
    };
    let start = usize::try_from(column)
        .unwrap_or(1)
        .saturating_sub(1)
        .min(l.len());
    let v = strip_comment(l.get(start..).unwrap_or(""));
    let v = v.split(['}', ']']).next().unwrap_or(v);
    // Inside a flow mapping a `,` ends the value unless digits follow (`38,400`).
    let v = match v.find(", ") {
        Some(p) => &v[..p],
        None => v,
    };
    v.trim().to_string()
}

/// `key: ` in front of (`line`, `column`), for the suggestion (`baud: 38400`).
fn key_before(lines: &[&str], line: u64, column: u64) -> String {
    let l = usize::try_from(line)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| lines.get(i))
        .copied()
        .unwrap_or("");
    let end = usize::try_from(column)
        .unwrap_or(1)
        .saturating_sub(1)
        .min(l.len());
    let before = l.get(..end).unwrap_or("").trim_end();
    match before.strip_suffix(':') {
        Some(k) => {
            let k = k.rsplit([' ', '{', ',']).next().unwrap_or(k);
            format!("{k}: ")
        }
        None => String::new(),
    }
}

/// The range of an integer type as the parser names it (`u32`).
fn int_range(ty: &str) -> Option<String> {
    let r = match ty {
        "u8" => "0 to 255",
        "u16" => "0 to 65535",
        "u32" => "0 to 4294967295",
        "u64" | "usize" => "0 to 18446744073709551615",
        "i8" => "-128 to 127",
        "i16" => "-32768 to 32767",
        "i32" => "-2147483648 to 2147483647",
        "i64" => "-9223372036854775808 to 9223372036854775807",
        _ => return None,
    };
    Some(r.to_string())
}

fn indentation(l: &str) -> usize {
    l.len() - l.trim_start_matches(' ').len()
}

fn is_blank_or_comment(l: &str) -> bool {
    let t = l.trim();
    t.is_empty() || t.starts_with('#')
}

/// `s` up to an unquoted ` #` comment.
fn strip_comment(s: &str) -> &str {
    let mut quote = None;
    for (i, ch) in s.char_indices() {
        match (quote, ch) {
            (Some(q), x) if x == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '#') if i == 0 || s[..i].ends_with([' ', '\t']) => return s[..i].trim_end(),
            _ => {}
        }
    }
    s.trim_end()
}
