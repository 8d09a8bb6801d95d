//! The XML that NVIDIA's RIMs use, and its canonical form (Canonical XML 1.1, W3C REC
//! `xml-c14n11`, without comments), on top of `quick-xml`'s tokenizer.
//!
//! No crate on crates.io canonicalises XML in safe Rust with the upkeep a security check needs;
//! the `xmlsec` bindings wrap libxmlsec1 and libxml2 through `unsafe` C calls, which this crate
//! forbids, and would add two C libraries to the TEE's trusted code. What a RIM needs is small,
//! so it is written here and kept to that: a document of elements, attributes, text and
//! namespace declarations, UTF-8, with no DTD (refused: no entity but the predefined ones and
//! character references is ever expanded), no CDATA-dependent meaning (CDATA is read as text, as
//! C14N requires), comments and processing instructions dropped (C14N without comments drops
//! comments; RIMs have no processing instructions, and one inside the root is refused).
//!
//! Canonicalisation of an element (C14N 1.1 sections 2.3 and 2.4, the same as 1.0 for a document
//! without `xml:` attributes, which are refused):
//! - start tag `<qname`, then the namespace declarations that are in scope and not already
//!   rendered by the nearest output ancestor with the same value, sorted by prefix (the default
//!   namespace first), then the attributes sorted by namespace URI (none first) and local name;
//! - attribute values escape `&`, `<`, `"`, tab, LF and CR; text escapes `&`, `<`, `>` and CR;
//! - empty elements are written as a start and an end tag;
//! - for a subtree (the signature's `SignedInfo`), the namespaces in scope from its ancestors are
//!   rendered on its apex, as in inclusive canonicalisation.

use std::collections::BTreeMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::error::{AttestError, Result};

/// Largest XML document accepted; NVIDIA's RIMs are about 20 KiB.
pub const MAX_XML_LEN: usize = 1024 * 1024;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 32;
/// Most nodes accepted.
const MAX_NODES: usize = 100_000;

/// A parsed element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// The qualified name as written: `prefix:local` or `local`.
    pub qname: String,
    /// Namespace declarations made on this element: prefix ("" for the default) to URI.
    pub declarations: BTreeMap<String, String>,
    /// Attributes other than namespace declarations, qualified name to normalised value.
    pub attributes: Vec<(String, String)>,
    /// Children in document order.
    pub children: Vec<Node>,
}

/// A child of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// An element.
    Element(Element),
    /// Character data, with references resolved and line ends normalised.
    Text(String),
}

fn bad(reason: impl Into<String>) -> AttestError {
    AttestError::malformed(format!("RIM XML: {}", reason.into()))
}

/// Namespaces in scope: prefix to URI.
pub type Scope = BTreeMap<String, String>;

impl Element {
    /// The part of the qualified name after the prefix.
    pub fn local_name(&self) -> &str {
        split_qname(&self.qname).1
    }

    /// The namespace URI of this element, given the scope of its parent.
    pub fn namespace(&self, parent_scope: &Scope) -> Option<String> {
        let scope = self.scope(parent_scope);
        scope.get(split_qname(&self.qname).0).cloned()
    }

    /// The scope inside this element.
    pub fn scope(&self, parent_scope: &Scope) -> Scope {
        let mut scope = parent_scope.clone();
        for (prefix, uri) in &self.declarations {
            scope.insert(prefix.clone(), uri.clone());
        }
        scope
    }

    /// The value of the attribute with this local name and namespace (None: no namespace).
    pub fn attribute(&self, scope: &Scope, namespace: Option<&str>, local: &str) -> Option<&str> {
        self.attributes.iter().find_map(|(qname, value)| {
            let (prefix, name) = split_qname(qname);
            let ns = (!prefix.is_empty()).then(|| scope.get(prefix).map(String::as_str));
            let matches = match (namespace, ns) {
                (None, None) => true,
                (Some(want), Some(Some(have))) => want == have,
                _ => false,
            };
            (matches && name == local).then_some(value.as_str())
        })
    }

    /// Child elements in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|node| match node {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }
}

fn split_qname(qname: &str) -> (&str, &str) {
    match qname.split_once(':') {
        Some((prefix, local)) => (prefix, local),
        None => ("", qname),
    }
}

/// Parses a document and returns its root element.
pub fn parse(text: &[u8]) -> Result<Element> {
    if text.len() > MAX_XML_LEN {
        return Err(bad(format!(
            "{} bytes, at most {MAX_XML_LEN} are accepted",
            text.len()
        )));
    }
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = false;

    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut nodes = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| bad(format!("at byte {}: {e}", reader.buffer_position())))?;
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(bad("too many nodes"));
        }
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(bad("elements nested too deep"));
                }
                if root.is_some() {
                    return Err(bad("content after the root element"));
                }
                stack.push(read_start(&start)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(bad("content after the root element"));
                }
                let element = read_start(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or_else(|| bad("unbalanced end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => root = Some(element),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content().map_err(|e| bad(e.to_string()))?;
                push_text(&mut stack, &content)?;
            }
            Event::CData(t) => {
                let content = t.xml10_content().map_err(|e| bad(e.to_string()))?;
                push_text(&mut stack, &content)?;
            }
            Event::GeneralRef(r) => {
                let name = r.xml10_content().map_err(|e| bad(e.to_string()))?;
                let reference = format!("&{name};");
                let resolved = quick_xml::escape::unescape(&reference)
                    .map_err(|e| bad(format!("reference {reference}: {e}")))?;
                push_text(&mut stack, &resolved)?;
            }
            Event::Comment(_) => {}
            Event::Decl(_) => {
                if !stack.is_empty() || root.is_some() {
                    return Err(bad("an XML declaration inside the document"));
                }
            }
            Event::PI(_) => {
                if !stack.is_empty() {
                    return Err(bad("a processing instruction inside the root element"));
                }
            }
            Event::DocType(_) => return Err(bad("a document type declaration")),
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(bad("the root element is not closed"));
    }
    root.ok_or_else(|| bad("no root element"))
}

fn push_text(stack: &mut [Element], text: &str) -> Result<()> {
    match stack.last_mut() {
        Some(parent) => {
            if let Some(Node::Text(previous)) = parent.children.last_mut() {
                previous.push_str(text);
            } else {
                parent.children.push(Node::Text(text.to_owned()));
            }
            Ok(())
        }
        // Only whitespace may stand outside the root element; C14N drops it.
        None if text.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) => Ok(()),
        None => Err(bad("text outside the root element")),
    }
}

fn read_start(start: &BytesStart<'_>) -> Result<Element> {
    let qname = std::str::from_utf8(start.name().as_ref())
        .map_err(|_| bad("a name is not UTF-8"))?
        .to_owned();
    check_qname(&qname)?;
    let mut declarations = BTreeMap::new();
    let mut attributes: Vec<(String, String)> = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| bad(format!("in `{qname}`: {e}")))?;
        let name = std::str::from_utf8(attribute.key.as_ref())
            .map_err(|_| bad("an attribute name is not UTF-8"))?
            .to_owned();
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| bad(format!("attribute `{name}`: {e}")))?
            .into_owned();
        if name == "xmlns" {
            declarations.insert(String::new(), value);
        } else if let Some(prefix) = name.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(bad(format!("prefix `{prefix}` undeclared (XML 1.1 style)")));
            }
            declarations.insert(prefix.to_owned(), value);
        } else {
            check_qname(&name)?;
            if name.starts_with("xml:") {
                return Err(bad(format!(
                    "attribute `{name}`: xml: attributes are not supported"
                )));
            }
            if attributes.iter().any(|(n, _)| *n == name) {
                return Err(bad(format!("attribute `{name}` repeated")));
            }
            attributes.push((name, value));
        }
    }
    Ok(Element {
        qname,
        declarations,
        attributes,
        children: Vec::new(),
    })
}

fn check_qname(qname: &str) -> Result<()> {
    let parts: Vec<&str> = qname.split(':').collect();
    if qname.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad(format!("bad name `{qname}`")));
    }
    Ok(())
}

/// Canonicalises `element` (Canonical XML 1.1 without comments) as the apex of the output,
/// with `inherited` the namespaces in scope from its ancestors, leaving out every descendant for
/// which `omit` returns true (with its subtree).
pub fn canonicalize(
    element: &Element,
    inherited: &Scope,
    omit: &dyn Fn(&Element, &Scope) -> bool,
) -> Result<Vec<u8>> {
    let mut out = String::new();
    write_element(element, inherited, &Scope::new(), omit, &mut out)?;
    Ok(out.into_bytes())
}

fn write_element(
    element: &Element,
    parent_scope: &Scope,
    rendered: &Scope,
    omit: &dyn Fn(&Element, &Scope) -> bool,
    out: &mut String,
) -> Result<()> {
    let scope = element.scope(parent_scope);
    out.push('<');
    out.push_str(&element.qname);

    // Namespace nodes: every in-scope namespace whose value the nearest rendered ancestor does
    // not already give; `xmlns=""` only when an ancestor rendered a non-empty default.
    let mut now_rendered = rendered.clone();
    for (prefix, uri) in &scope {
        if rendered.get(prefix) == Some(uri) {
            continue;
        }
        // An empty default namespace is rendered only to undo a non-empty one above it.
        if prefix.is_empty() && uri.is_empty() && rendered.get("").is_none_or(|u| u.is_empty()) {
            continue;
        }
        if prefix.is_empty() {
            out.push_str(" xmlns=\"");
        } else {
            out.push_str(" xmlns:");
            out.push_str(prefix);
            out.push_str("=\"");
        }
        escape_attribute(uri, out);
        out.push('"');
        now_rendered.insert(prefix.clone(), uri.clone());
    }
    if !scope.contains_key("") && rendered.get("").is_some_and(|uri| !uri.is_empty()) {
        out.push_str(" xmlns=\"\"");
        now_rendered.insert(String::new(), String::new());
    }

    let mut attributes = Vec::with_capacity(element.attributes.len());
    for (qname, value) in &element.attributes {
        let (prefix, local) = split_qname(qname);
        let uri = if prefix.is_empty() {
            String::new()
        } else {
            scope
                .get(prefix)
                .cloned()
                .ok_or_else(|| bad(format!("attribute `{qname}`: prefix `{prefix}` undeclared")))?
        };
        attributes.push((uri, local, qname, value));
    }
    attributes.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (_, _, qname, value) in attributes {
        out.push(' ');
        out.push_str(qname);
        out.push_str("=\"");
        escape_attribute(value, out);
        out.push('"');
    }
    let (prefix, _) = split_qname(&element.qname);
    if !prefix.is_empty() && !scope.contains_key(prefix) {
        return Err(bad(format!(
            "element `{}`: prefix `{prefix}` undeclared",
            element.qname
        )));
    }
    out.push('>');

    for child in &element.children {
        match child {
            Node::Text(text) => escape_text(text, out),
            Node::Element(child) => {
                if !omit(child, &scope) {
                    write_element(child, &scope, &now_rendered, omit, out)?;
                }
            }
        }
    }
    out.push_str("</");
    out.push_str(&element.qname);
    out.push('>');
    Ok(())
}

fn escape_attribute(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_text(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(text: &str) -> String {
        let root = match parse(text.as_bytes()) {
            Ok(root) => root,
            Err(e) => return format!("error: {e}"),
        };
        match canonicalize(&root, &Scope::new(), &|_, _| false) {
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_default(),
            Err(e) => format!("error: {e}"),
        }
    }

    // Cases from the C14N 1.0/1.1 recommendations' examples (section 3), reduced to what
    // this implementation supports.
    #[test]
    fn empty_elements_become_start_and_end_tags() {
        assert_eq!(c14n("<a><b/></a>"), "<a><b></b></a>");
    }

    #[test]
    fn attributes_are_sorted_by_namespace_then_name() {
        let doc = r#"<e xmlns:b="http://www.ietf.org" xmlns:a="http://www.w3.org" xmlns="http://example.org" attr2="2" attr="1" b:attr="sorted" a:attr="out"></e>"#;
        assert_eq!(
            c14n(doc),
            r#"<e xmlns="http://example.org" xmlns:a="http://www.w3.org" xmlns:b="http://www.ietf.org" attr="1" attr2="2" b:attr="sorted" a:attr="out"></e>"#
        );
    }

    #[test]
    fn redundant_declarations_are_dropped_and_changed_ones_kept() {
        let doc = r#"<a xmlns:p="u1"><b xmlns:p="u1"><c xmlns:p="u2"/></b></a>"#;
        assert_eq!(
            c14n(doc),
            r#"<a xmlns:p="u1"><b><c xmlns:p="u2"></c></b></a>"#
        );
    }

    #[test]
    fn an_undeclared_default_is_rendered_empty() {
        let doc = r#"<a xmlns="u"><b xmlns=""/></a>"#;
        // Our parser records xmlns="" as a declaration of the empty URI.
        assert_eq!(c14n(doc), r#"<a xmlns="u"><b xmlns=""></b></a>"#);
    }

    #[test]
    fn text_and_attributes_are_escaped() {
        let doc = "<a v=\"&lt;&amp;&quot;&#9;&#10;&#13;x\">&lt;&amp;&gt;\"'&#13;</a>";
        assert_eq!(
            c14n(doc),
            "<a v=\"&lt;&amp;&quot;&#x9;&#xA;&#xD;x\">&lt;&amp;&gt;\"'&#xD;</a>"
        );
    }

    #[test]
    fn literal_whitespace_in_attributes_is_normalised() {
        assert_eq!(c14n("<a v=\"x\ny\tz\"/>"), "<a v=\"x y z\"></a>");
    }

    #[test]
    fn line_ends_and_cdata_become_text() {
        assert_eq!(
            c14n("<a>x\r\ny<![CDATA[<&>]]></a>"),
            "<a>x\ny&lt;&amp;&gt;</a>"
        );
    }

    #[test]
    fn comments_declarations_and_outer_whitespace_are_dropped() {
        assert_eq!(
            c14n("<?xml version=\"1.0\"?>\n<!-- c --><a><!-- c -->x</a>\n"),
            "<a>x</a>"
        );
    }

    #[test]
    fn whitespace_inside_is_kept() {
        assert_eq!(c14n("<a>\n  <b> </b>\n</a>"), "<a>\n  <b> </b>\n</a>");
    }

    #[test]
    fn a_subtree_carries_its_inherited_namespaces() -> Result<()> {
        let root = parse(
            br#"<r xmlns="d" xmlns:x="u"><x:s xmlns:y="v"><x:t/></x:s><o xmlns:z="w"/></r>"#,
        )?;
        let scope = root.scope(&Scope::new());
        let apex = root.elements().next().ok_or_else(|| bad("no child"))?;
        let out = canonicalize(apex, &scope, &|_, _| false)?;
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"<x:s xmlns="d" xmlns:x="u" xmlns:y="v"><x:t></x:t></x:s>"#
        );
        Ok(())
    }

    #[test]
    fn omitted_subtrees_are_left_out() -> Result<()> {
        let root = parse(b"<a>1<b>2</b>3</a>")?;
        let out = canonicalize(&root, &Scope::new(), &|e, _| e.qname == "b")?;
        assert_eq!(String::from_utf8_lossy(&out), "<a>13</a>");
        Ok(())
    }

    #[test]
    fn hostile_documents_are_refused() {
        for doc in [
            "<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>",
            "<a>&x;</a>",
            "<a><b></a>",
            "<a></a><b></b>",
            "text<a/>",
            "<a x=\"1\" x=\"2\"/>",
            "<p:a/>",
            "<a p:x=\"1\"/>",
            "<a xml:id=\"1\"/>",
            "<a><?pi x?></a>",
            "",
        ] {
            assert!(c14n(doc).starts_with("error"), "{doc}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(c14n(&deep).starts_with("error"));
    }
}
