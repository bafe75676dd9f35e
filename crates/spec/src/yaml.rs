//! A YAML (and therefore JSON) document tree in which every node knows where it came from.
//!
//! We build our own tree from saphyr-parser's events rather than deserialising with serde,
//! because diagnostics need the span of every key and value, and because one bad field must
//! not stop us from reporting the others.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};

/// Byte range in the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> Self {
        (s.offset, s.len).into()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string; `plain` is false when it was quoted or a block scalar.
    Str {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// A syntax error with its location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub span: Span,
}

/// Nesting deeper than this is refused: no workflow needs it, and it bounds recursion in
/// every consumer of the tree.
const MAX_DEPTH: usize = 64;
/// Aliases may not expand the document beyond this many nodes ("billion laughs").
const MAX_NODES: usize = 1_000_000;

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str { .. } => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Scalars as text (numbers and booleans as YAML wrote them), for fields that take
    /// strings but where users naturally write `1` or `true`.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str { text, .. } => Some(text.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts to JSON, for free-form values (executor configs, schemas, literal outputs).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str { text, .. } => J::String(text.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Parses every document of a YAML stream. An empty stream yields no documents.
pub fn parse(source: &str) -> Result<Vec<Node>, SyntaxError> {
    let offsets = CharOffsets::new(source);
    let mut builder = Builder {
        source,
        offsets: &offsets,
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut parser = Parser::new_from_str(source);
    let mut docs = Vec::new();
    loop {
        let (event, _) = builder.next(&mut parser)?;
        match event {
            Event::StreamEnd => return Ok(docs),
            Event::DocumentStart(_) => {
                let (first, span) = builder.next(&mut parser)?;
                let node = match first {
                    Event::DocumentEnd => Node {
                        value: Value::Null,
                        span: builder.span(span),
                    },
                    other => {
                        let node = builder.node(&mut parser, other, span, 0)?;
                        builder.expect_document_end(&mut parser)?;
                        node
                    }
                };
                docs.push(node);
            }
            _ => {}
        }
    }
}

struct Builder<'a> {
    source: &'a str,
    offsets: &'a CharOffsets,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

impl Builder<'_> {
    fn next<'i>(
        &self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
    ) -> Result<(Event<'i>, YSpan), SyntaxError> {
        match parser.next() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => {
                let offset = self.offsets.byte(e.marker().index());
                Err(SyntaxError {
                    message: e.info().to_string(),
                    span: Span { offset, len: 0 },
                })
            }
            None => Ok((Event::StreamEnd, YSpan::default())),
        }
    }

    fn span(&self, s: YSpan) -> Span {
        let start = self.offsets.byte(s.start.index());
        let end = self.offsets.byte(s.end.index()).max(start);
        Span {
            offset: start,
            len: end - start,
        }
    }

    fn expect_document_end<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
    ) -> Result<(), SyntaxError> {
        let (event, span) = self.next(parser)?;
        match event {
            Event::DocumentEnd | Event::StreamEnd => Ok(()),
            _ => Err(SyntaxError {
                message: "unexpected content after the document".into(),
                span: self.span(span),
            }),
        }
    }

    fn count(&mut self, span: Span, extra: usize) -> Result<(), SyntaxError> {
        self.nodes += extra;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                message: "document is too large (aliases expand past 1 000 000 nodes)".into(),
                span,
            });
        }
        Ok(())
    }

    fn node<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
        event: Event<'i>,
        span: YSpan,
        depth: usize,
    ) -> Result<Node, SyntaxError> {
        let span = self.span(span);
        if depth > MAX_DEPTH {
            return Err(SyntaxError {
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
                span,
            });
        }
        self.count(span, 1)?;
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == ScalarStyle::Plain && tag.is_none();
                (
                    Node {
                        value: scalar(&text, plain),
                        span,
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id).cloned() else {
                    return Err(SyntaxError {
                        message: "alias refers to an unknown anchor".into(),
                        span,
                    });
                };
                self.count(span, weight(&target))?;
                return Ok(Node {
                    value: target.value,
                    span,
                });
            }
            Event::SequenceStart(anchor, _) => (self.sequence(parser, span, depth)?, anchor),
            Event::MappingStart(anchor, _) => (self.mapping(parser, span, depth)?, anchor),
            _ => {
                return Err(SyntaxError {
                    message: "unexpected YAML event".into(),
                    span,
                });
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    fn sequence<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
        start: Span,
        depth: usize,
    ) -> Result<Node, SyntaxError> {
        let mut items = Vec::new();
        loop {
            let (event, span) = self.next(parser)?;
            match event {
                Event::SequenceEnd => {
                    let last = items.last().map(|n: &Node| n.span.offset + n.span.len);
                    return Ok(Node {
                        value: Value::Seq(items),
                        span: self.join(start, span, last),
                    });
                }
                Event::StreamEnd => {
                    return Err(SyntaxError {
                        message: "unterminated list".into(),
                        span: start,
                    });
                }
                other => items.push(self.node(parser, other, span, depth + 1)?),
            }
        }
    }

    fn mapping<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
        start: Span,
        depth: usize,
    ) -> Result<Node, SyntaxError> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        // Which entries came from a merge key: a key written in this mapping overrides them.
        let mut merged: Vec<bool> = Vec::new();
        // End of the last entry as written (merged entries live elsewhere in the file).
        let mut last: Option<usize> = None;
        loop {
            let (event, span) = self.next(parser)?;
            let key = match event {
                Event::MappingEnd => {
                    return Ok(Node {
                        value: Value::Map(entries),
                        span: self.join(start, span, last),
                    });
                }
                Event::StreamEnd => {
                    return Err(SyntaxError {
                        message: "unterminated mapping".into(),
                        span: start,
                    });
                }
                other => self.node(parser, other, span, depth + 1)?,
            };
            let (event, span) = self.next(parser)?;
            let value = self.node(parser, event, span, depth + 1)?;
            last = Some((key.span.offset + key.span.len).max(value.span.offset + value.span.len));
            if key.as_str() == Some("<<") {
                merge_into(&mut entries, value);
                merged.resize(entries.len(), true);
                continue;
            }
            let existing = entries.iter().position(|(k, _)| k.value == key.value);
            if let (Some(i), Some(name)) = (existing, key.scalar_text()) {
                if merged[i] {
                    entries[i] = (key, value);
                    merged[i] = false;
                    continue;
                }
                return Err(SyntaxError {
                    message: format!("duplicate key `{name}`"),
                    span: key.span,
                });
            }
            entries.push((key, value));
            merged.push(false);
        }
    }

    /// A span from the start of `start` to the end of the collection: the closing `]` or `}`
    /// of a flow collection, or the end of the last item of a block collection (whose end
    /// event sits at the next token, possibly lines further down).
    fn join(&self, start: Span, end: YSpan, last: Option<usize>) -> Span {
        let close = self.offsets.byte(end.start.index());
        let flow = matches!(self.source.as_bytes().get(close), Some(b']' | b'}'));
        let end = match (flow, last) {
            (false, Some(last)) => last,
            _ => self.offsets.byte(end.end.index()),
        }
        .max(start.offset + start.len);
        Span {
            offset: start.offset,
            len: end - start.offset,
        }
    }
}

/// YAML merge keys (`<<: *base`): keys already present win over merged ones (and keys
/// written after the merge replace merged ones, in `mapping`).
fn merge_into(entries: &mut Vec<(Node, Node)>, value: Node) {
    let sources = match value.value {
        Value::Map(_) => vec![value],
        Value::Seq(items) => items,
        _ => return,
    };
    for source in sources {
        if let Value::Map(more) = source.value {
            for (k, v) in more {
                if !entries
                    .iter()
                    .any(|(existing, _)| existing.value == k.value)
                {
                    entries.push((k, v));
                }
            }
        }
    }
}

fn weight(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(weight).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| weight(k) + weight(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Resolves a scalar with the YAML 1.2 core schema; quoted scalars are always strings.
fn scalar(text: &str, plain: bool) -> Value {
    if !plain {
        return Value::Str {
            text: text.to_string(),
            plain: false,
        };
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(i) = parse_int(text) {
        return Value::Int(i);
    }
    let looks_numeric = text.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c));
    if looks_numeric
        && !text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    match text {
        ".inf" | ".Inf" | "+.inf" => Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" => Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" => Value::Float(f64::NAN),
        _ => Value::Str {
            text: text.to_string(),
            plain: true,
        },
    }
}

fn parse_int(text: &str) -> Option<i64> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, body) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    i64::from_str_radix(body, radix).ok().map(|v| v * sign)
}

/// Maps the parser's character indices to byte offsets (they differ outside ASCII).
struct CharOffsets {
    starts: Option<Vec<usize>>,
    len: usize,
}

impl CharOffsets {
    fn new(source: &str) -> Self {
        let starts = (!source.is_ascii()).then(|| source.char_indices().map(|(i, _)| i).collect());
        CharOffsets {
            starts,
            len: source.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.starts {
            None => char_index.min(self.len),
            Some(starts) => starts.get(char_index).copied().unwrap_or(self.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_the_core_schema() {
        let docs = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 0x1F\ng: 1.2.3\n").unwrap();
        let doc = &docs[0];
        assert_eq!(doc.get("a").unwrap().value, Value::Int(1));
        assert_eq!(doc.get("b").unwrap().as_str(), Some("1"));
        assert_eq!(doc.get("c").unwrap().value, Value::Bool(true));
        assert!(doc.get("d").unwrap().is_null());
        assert_eq!(doc.get("e").unwrap().value, Value::Float(1.5));
        assert_eq!(doc.get("f").unwrap().value, Value::Int(31));
        assert_eq!(doc.get("g").unwrap().as_str(), Some("1.2.3"));
    }

    #[test]
    fn spans_point_at_values_in_bytes() {
        let src = "name: é\nsteps: [x]\n";
        let doc = &parse(src).unwrap()[0];
        let steps = doc.get("steps").unwrap();
        assert_eq!(
            &src[steps.span.offset..steps.span.offset + steps.span.len],
            "[x]"
        );
    }

    #[test]
    fn block_collections_end_at_their_last_item() {
        let src = "steps:\n  - name: a\n    retry:\n      limit: 1\n\n  - name: b\nnext: 1\n";
        let doc = &parse(src).unwrap()[0];
        let steps = doc.get("steps").unwrap();
        let text = |n: &Node| &src[n.span.offset..n.span.offset + n.span.len];
        assert!(text(steps).ends_with("name: b"), "{:?}", text(steps));
        let Value::Seq(items) = &steps.value else {
            panic!("steps is not a list")
        };
        assert_eq!(text(&items[0]), "name: a\n    retry:\n      limit: 1");
        assert_eq!(text(items[0].get("retry").unwrap()), "limit: 1");
        let flow = &parse("a: {x: 1, y: [2, 3] }\n").unwrap()[0];
        assert_eq!(
            &"a: {x: 1, y: [2, 3] }\n"[flow.get("a").unwrap().span.offset..]
                [..flow.get("a").unwrap().span.len],
            "{x: 1, y: [2, 3] }"
        );
    }

    #[test]
    fn multiple_documents_and_merge_keys() {
        let docs =
            parse("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n---\nname: two\n").unwrap();
        assert_eq!(docs.len(), 2);
        let used = docs[0].get("use").unwrap();
        assert_eq!(used.get("x").unwrap().value, Value::Int(1));
        assert_eq!(used.get("y").unwrap().value, Value::Int(3));
    }

    #[test]
    fn rejects_duplicate_keys_and_bombs() {
        assert!(
            parse("a: 1\na: 2\n")
                .unwrap_err()
                .message
                .contains("duplicate key `a`")
        );
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            bomb.push_str(&format!("l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(parse(&bomb).unwrap_err().message.contains("too large"));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&deep).is_err());
    }
}
