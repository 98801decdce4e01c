//! A small XML writer: elements, attributes and text, every value escaped.
//! The VAST document is a fixed shape, so this is all it needs.

use std::fmt::Write;

pub(crate) struct Xml {
    out: String,
    open: Vec<&'static str>,
}

impl Xml {
    pub fn new() -> Self {
        Self {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
            open: Vec::new(),
        }
    }

    fn indent(&mut self) {
        for _ in 0..self.open.len() {
            self.out.push_str("  ");
        }
    }

    fn start_tag(&mut self, name: &'static str, attrs: &[(&str, &str)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"");
            escape_into(&mut self.out, v);
            self.out.push('"');
        }
        self.out.push('>');
    }

    /// Opens `name`; its children follow until [`Xml::close`].
    pub fn open(&mut self, name: &'static str, attrs: &[(&str, &str)]) -> &mut Self {
        self.start_tag(name, attrs);
        self.out.push('\n');
        self.open.push(name);
        self
    }

    /// `<name attrs>text</name>` on one line.
    pub fn leaf(&mut self, name: &'static str, attrs: &[(&str, &str)], text: &str) -> &mut Self {
        self.start_tag(name, attrs);
        escape_into(&mut self.out, text);
        let _ = writeln!(self.out, "</{name}>");
        self
    }

    /// Closes the innermost open element.
    pub fn close(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.indent();
            let _ = writeln!(self.out, "</{name}>");
        }
        self
    }

    /// The document, with every element still open closed.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }
}

/// Escapes the five XML special characters (text and attribute values) and
/// drops what XML 1.0 cannot carry: control characters other than tab, LF
/// and CR, and the noncharacters U+FFFE and U+FFFF (its `Char` production
/// excludes them, and parsers refuse a document that holds one).
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let mut x = Xml::new();
        x.open("A", &[("t", "a\"b<'&>")])
            .leaf("B", &[], "x&y<z>\u{1}\u{fffe}\u{ffff}");
        let s = x.finish();
        assert!(s.contains("<A t=\"a&quot;b&lt;&apos;&amp;&gt;\">"), "{s}");
        assert!(s.contains("<B>x&amp;y&lt;z&gt;</B>"), "{s}");
        assert!(s.ends_with("</A>\n"), "{s}");
    }
}
