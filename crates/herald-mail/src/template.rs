//! Brand alert templates: a subject, an HTML body and an optional text body,
//! written in minijinja (Jinja2) syntax.
//!
//! [`validate`] is what the API runs on save: it reports every syntax error,
//! every variable outside the documented render context and every error a
//! trial render with example data hits, each with its part and line.
//! [`Template::compile`] is what the mailer runs: it only compiles, and
//! rendering is strict, so a member whose data lacks a field the template
//! uses fails alone with a reason instead of getting an email with a hole.

use std::collections::BTreeSet;
use std::fmt;

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

use crate::render::RenderContext;

/// Largest accepted subject template, in bytes.
pub const MAX_SUBJECT_SOURCE: usize = 2_000;
/// Largest accepted HTML or text template, in bytes.
pub const MAX_BODY_SOURCE: usize = 1024 * 1024;

/// How much work one render may do (roughly, template instructions). A
/// typical alert uses a few thousand; the cap stops a runaway loop from
/// pinning a mailer.
const RENDER_FUEL: u64 = 5_000_000;

/// A template as stored and as sent to the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSource {
    pub subject: String,
    pub html: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One of the three parts of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplatePart {
    Subject,
    Html,
    Text,
}

impl TemplatePart {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplatePart::Subject => "subject",
            TemplatePart::Html => "html",
            TemplatePart::Text => "text",
        }
    }
}

impl fmt::Display for TemplatePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem in one part of a template; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
pub struct TemplateError {
    pub part: TemplatePart,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} template, line {line}: {}", self.part, self.message),
            None => write!(f, "{} template: {}", self.part, self.message),
        }
    }
}

impl TemplateError {
    fn new(part: TemplatePart, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            part,
            line,
            message: message.into(),
        }
    }

    pub(crate) fn from_minijinja(part: TemplatePart, err: &minijinja::Error) -> Self {
        let message = match (err.kind(), err.detail()) {
            (ErrorKind::OutOfFuel, _) => {
                "rendering did too much work (is there a runaway loop?)".to_owned()
            }
            (ErrorKind::UndefinedError, None) => {
                "a value the template uses is missing (undefined)".to_owned()
            }
            (kind, Some(detail)) => format!("{kind}: {detail}"),
            (kind, None) => kind.to_string(),
        };
        Self::new(part, err.line(), message)
    }
}

/// What the render context offers at its top level, for the unknown-variable
/// check. A test keeps it in step with [`RenderContext`].
pub(crate) const CONTEXT_SCHEMA: &[(&str, Shape)] = &[
    (
        "member",
        Shape::Object(&["first_name", "name", "email", "locale", "time_zone"]),
    ),
    ("alert", Shape::Object(&["id", "subject"])),
    ("brands", Shape::List(&["id", "name"])),
    (
        "sales",
        Shape::List(&["brand", "headline", "url", "image", "starts_at", "ends_at"]),
    ),
    ("unsubscribe_url", Shape::Scalar),
];

#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    Object(&'static [&'static str]),
    List(&'static [&'static str]),
    Scalar,
}

/// A compiled template, ready to render for many members.
#[derive(Debug)]
pub struct Template {
    env: Environment<'static>,
    has_text: bool,
    /// How to render it for many members of one alert quickly, when the
    /// template allows (see [`crate::prepared`]).
    pub(crate) plan: Option<crate::prepared::SlotPlan>,
}

/// The environment every template part is compiled in: strict about
/// undefined values, fuelled, HTML-escaping only the HTML part.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(RENDER_FUEL));
    env.set_auto_escape_callback(|name| {
        if name == TemplatePart::Html.as_str() {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env
}

impl Template {
    /// Compiles the three parts; reports syntax errors and oversized parts.
    pub fn compile(source: &TemplateSource) -> Result<Self, Vec<TemplateError>> {
        let mut env = environment();
        let mut errors = Vec::new();
        for (part, text) in parts(source) {
            let limit = match part {
                TemplatePart::Subject => MAX_SUBJECT_SOURCE,
                TemplatePart::Html | TemplatePart::Text => MAX_BODY_SOURCE,
            };
            if text.len() > limit {
                errors.push(TemplateError::new(
                    part,
                    None,
                    format!("is {} bytes long; the limit is {limit}", text.len()),
                ));
                continue;
            }
            if let Err(err) = env.add_template_owned(part.as_str(), text.to_owned()) {
                errors.push(TemplateError::from_minijinja(part, &err));
            }
        }
        if errors.is_empty() {
            Ok(Self {
                env,
                has_text: source.text.is_some(),
                plan: crate::prepared::SlotPlan::build(source),
            })
        } else {
            Err(errors)
        }
    }

    pub fn has_text(&self) -> bool {
        self.has_text
    }

    /// Renders one part. `Ok(None)` for a text part the template lacks.
    pub fn render_part(
        &self,
        part: TemplatePart,
        ctx: &Value,
    ) -> Result<Option<String>, TemplateError> {
        let template = match self.env.get_template(part.as_str()) {
            Ok(t) => t,
            Err(err) if err.kind() == ErrorKind::TemplateNotFound => return Ok(None),
            Err(err) => return Err(TemplateError::from_minijinja(part, &err)),
        };
        template
            .render(ctx.clone())
            .map(Some)
            .map_err(|err| TemplateError::from_minijinja(part, &err))
    }

    fn sources(&self) -> impl Iterator<Item = (TemplatePart, minijinja::Template<'_, '_>)> {
        self.env.templates().filter_map(|(name, template)| {
            let part = [
                TemplatePart::Subject,
                TemplatePart::Html,
                TemplatePart::Text,
            ]
            .into_iter()
            .find(|p| p.as_str() == name)?;
            Some((part, template))
        })
    }
}

fn parts(source: &TemplateSource) -> impl Iterator<Item = (TemplatePart, &str)> {
    [
        (TemplatePart::Subject, Some(source.subject.as_str())),
        (TemplatePart::Html, Some(source.html.as_str())),
        (TemplatePart::Text, source.text.as_deref()),
    ]
    .into_iter()
    .filter_map(|(part, text)| Some((part, text?)))
}

/// Checks a template the way the API does before saving it: syntax, size,
/// variables outside the documented render context, and a trial render of
/// every part with [`RenderContext::example`]. Errors come sorted by part
/// and line.
pub fn validate(source: &TemplateSource) -> Result<(), Vec<TemplateError>> {
    let template = Template::compile(source)?;
    let globals: BTreeSet<String> = template
        .env
        .globals()
        .map(|(name, _)| name.to_owned())
        .collect();
    let example = Value::from(minijinja::value::Serde(RenderContext::example()));
    let mut errors = Vec::new();
    let mut parts: Vec<_> = template.sources().collect();
    parts.sort_by_key(|(part, _)| *part);
    for (part, compiled) in parts {
        let text = parts_source(source, part);
        let mut unknown: Vec<TemplateError> = compiled
            .undeclared_variables(true)
            .into_iter()
            .filter_map(|path| unknown_reference(&path, &globals))
            .map(|(path, message)| {
                let segments: Vec<&str> = path.split('.').collect();
                TemplateError::new(part, reference_line(text, &segments), message)
            })
            .collect();
        if unknown.is_empty() {
            if let Err(err) = template.render_part(part, &example) {
                errors.push(err);
            }
        } else {
            errors.append(&mut unknown);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort_by(|a, b| (a.part, a.line, &a.message).cmp(&(b.part, b.line, &b.message)));
        Err(errors)
    }
}

fn parts_source(source: &TemplateSource, part: TemplatePart) -> &str {
    match part {
        TemplatePart::Subject => &source.subject,
        TemplatePart::Html => &source.html,
        TemplatePart::Text => source.text.as_deref().unwrap_or_default(),
    }
}

/// For a dotted path the template looks up but does not define, the path as
/// reported and a message, or `None` when the render context provides it.
fn unknown_reference(path: &str, globals: &BTreeSet<String>) -> Option<(String, String)> {
    let mut segments = path.split('.');
    let root = segments.next().unwrap_or_default();
    let field = segments.next();
    if globals.contains(root) {
        return None;
    }
    let Some((_, shape)) = CONTEXT_SCHEMA.iter().find(|(name, _)| *name == root) else {
        let known: Vec<&str> = CONTEXT_SCHEMA.iter().map(|(name, _)| *name).collect();
        return Some((
            root.to_owned(),
            format!(
                "unknown variable `{root}`; the template can use {}",
                known.join(", ")
            ),
        ));
    };
    let field = field?;
    match shape {
        Shape::Object(fields) if fields.contains(&field) => None,
        Shape::Object(fields) => Some((
            format!("{root}.{field}"),
            format!(
                "unknown variable `{root}.{field}`; {root} has {}",
                fields.join(", ")
            ),
        )),
        Shape::List(_) if field.bytes().all(|b| b.is_ascii_digit()) => None,
        Shape::List(fields) => Some((
            format!("{root}.{field}"),
            format!(
                "unknown variable `{root}.{field}`; {root} is a list (loop over it: each item has {})",
                fields.join(", ")
            ),
        )),
        Shape::Scalar => Some((
            format!("{root}.{field}"),
            format!("unknown variable `{root}.{field}`; {root} is text and has no fields"),
        )),
    }
}

/// The 1-based line where `path` (`["member", "frist_name"]`) is first
/// referenced inside a `{{ }}` or `{% %}` tag.
///
/// minijinja's static analysis reports names without positions, so this
/// scans the tags itself: identifiers outside string literals and comments,
/// not preceded by a dot. When the full path is not found the line of the
/// root name is given.
fn reference_line(source: &str, path: &[&str]) -> Option<usize> {
    let refs = tag_identifiers(source);
    let starts_path = |i: usize| {
        path.iter().enumerate().all(|(k, seg)| {
            refs.get(i + k)
                .is_some_and(|r| r.name == *seg && (k == 0) != r.after_dot)
        })
    };
    let root_at = |i: usize| refs[i].name == path[0] && !refs[i].after_dot;
    (0..refs.len())
        .find(|&i| starts_path(i))
        .or_else(|| (0..refs.len()).find(|&i| root_at(i)))
        .map(|i| refs[i].line)
}

struct IdentRef<'a> {
    name: &'a str,
    line: usize,
    after_dot: bool,
}

fn tag_identifiers(source: &str) -> Vec<IdentRef<'_>> {
    let bytes = source.as_bytes();
    let mut refs = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let mut in_tag: Option<&[u8]> = None;
    let mut after_dot = false;
    while i < bytes.len() {
        let rest = &bytes[i..];
        match in_tag {
            None => {
                if rest.starts_with(b"{#") {
                    let end = find(rest, b"#}").map_or(rest.len(), |e| e + 2);
                    line += count_newlines(&rest[..end]);
                    i += end;
                    continue;
                }
                if rest.starts_with(b"{%") && is_raw_block(rest) {
                    let end = find_endraw(&rest[2..]).map_or(rest.len(), |e| e + 2);
                    line += count_newlines(&rest[..end]);
                    i += end;
                    continue;
                }
                if rest.starts_with(b"{{") {
                    in_tag = Some(b"}}");
                    after_dot = false;
                    i += 2;
                    continue;
                }
                if rest.starts_with(b"{%") {
                    in_tag = Some(b"%}");
                    after_dot = false;
                    i += 2;
                    continue;
                }
            }
            Some(close) => {
                if rest.starts_with(close) {
                    in_tag = None;
                    i += 2;
                    continue;
                }
                let c = bytes[i];
                if c == b'"' || c == b'\'' {
                    let mut j = i + 1;
                    while j < bytes.len() && bytes[j] != c {
                        if bytes[j] == b'\\' {
                            j += 1;
                        }
                        j += 1;
                    }
                    let end = (j + 1).min(bytes.len());
                    line += count_newlines(&bytes[i..end]);
                    i = end;
                    after_dot = false;
                    continue;
                }
                if c.is_ascii_alphabetic() || c == b'_' {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_')
                    {
                        i += 1;
                    }
                    refs.push(IdentRef {
                        name: &source[start..i],
                        line,
                        after_dot,
                    });
                    after_dot = false;
                    continue;
                }
                if c == b'.' {
                    after_dot = true;
                } else if !c.is_ascii_whitespace() {
                    after_dot = false;
                }
            }
        }
        if bytes[i] == b'\n' {
            line += 1;
        }
        i += 1;
    }
    refs
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn count_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

/// `{% raw %}`, allowing whitespace-control markers (`{%- raw -%}`).
fn is_raw_block(rest: &[u8]) -> bool {
    let Some(end) = find(rest, b"%}") else {
        return false;
    };
    let inner = String::from_utf8_lossy(&rest[2..end]);
    inner.trim_matches(|c: char| c.is_whitespace() || "-+~".contains(c)) == "raw"
}

/// The byte just past the first `{% endraw %}` in `rest`, the body of a raw
/// block.
pub(crate) fn find_endraw(rest: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(open) = find(&rest[from..], b"{%") {
        let at = from + open;
        let close = find(&rest[at..], b"%}")?;
        let inner = String::from_utf8_lossy(&rest[at + 2..at + close]);
        if inner.trim_matches(|c: char| c.is_whitespace() || "-+~".contains(c)) == "endraw" {
            return Some(at + close + 2);
        }
        from = at + 2;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(subject: &str, html: &str, text: Option<&str>) -> TemplateSource {
        TemplateSource {
            subject: subject.to_owned(),
            html: html.to_owned(),
            text: text.map(str::to_owned),
        }
    }

    fn errors(src: &TemplateSource) -> Vec<TemplateError> {
        validate(src).expect_err("template should be rejected")
    }

    #[test]
    fn a_template_using_the_whole_context_is_valid() {
        let html = r#"<p>Hi {{ member.first_name | default("there") }} ({{ member.email }})</p>
{% for brand in brands %}<h2>{{ brand.name }}</h2>{% endfor %}
{% for sale in sales %}
  <a href="{{ sale.url }}">{{ sale.headline }}</a>
  {% if sale.image is defined %}<img src="{{ sale.image }}">{% endif %}
  {{ sale.brand }} {{ sale.starts_at }} {{ sale.ends_at | default("") }}
{% endfor %}
{{ member.name }} {{ member.locale }} {{ member.time_zone }} {{ alert.id }}
{% set n = namespace(count=0) %}{% for i in range(2) %}{% set n.count = n.count + i %}{% endfor %}
<a href="{{ unsubscribe_url }}">unsubscribe</a>{{ sales.0.headline }}"#;
        let src = source(
            "{{ alert.subject }}: {{ brands | map(attribute='name') | join(', ') }}",
            html,
            Some("{{ sales | length }} sales. Unsubscribe: {{ unsubscribe_url }}"),
        );
        assert_eq!(validate(&src), Ok(()));
    }

    #[test]
    fn syntax_errors_name_the_part_and_line() {
        let src = source(
            "Hello",
            "<p>one</p>\n<p>two</p>\n{% for sale in sales %}\n{{ sale.url }}\n",
            Some("ok\n{{ member.email }"),
        );
        let errs = errors(&src);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].part, TemplatePart::Html);
        assert!(errs[0].line.is_some_and(|l| l >= 4), "{:?}", errs[0]);
        assert!(errs[0].message.starts_with("syntax error"), "{}", errs[0]);
        assert_eq!(errs[1].part, TemplatePart::Text);
        assert_eq!(errs[1].line, Some(2));
        assert!(errs[1]
            .to_string()
            .starts_with("text template, line 2: syntax error"));
    }

    #[test]
    fn unknown_top_level_variables_are_reported_with_their_line() {
        let src = source(
            "Hi {{ membr.first_name }}",
            "<p>\n{{ 'members' }} {# coupon #}\n\n{{ coupon }}</p>",
            None,
        );
        let errs = errors(&src);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].part, TemplatePart::Subject);
        assert_eq!(errs[0].line, Some(1));
        assert!(
            errs[0].message.starts_with("unknown variable `membr`"),
            "{}",
            errs[0]
        );
        assert!(errs[0]
            .message
            .contains("member, alert, brands, sales, unsubscribe_url"));
        assert_eq!(errs[1].part, TemplatePart::Html);
        assert_eq!(
            errs[1].line,
            Some(4),
            "the string and the comment are skipped"
        );
        assert!(errs[1].message.contains("`coupon`"));
    }

    #[test]
    fn unknown_fields_of_documented_objects_are_reported() {
        let src = source(
            "ok",
            "line one\n{{ member.email }}\n{% if x %}{% endif %}{{ member.frist_name }}",
            Some("{{ unsubscribe_url.host }}\n{{ sales.first }}"),
        );
        let errs = errors(&src);
        let summary: Vec<_> = errs
            .iter()
            .map(|e| {
                (
                    e.part,
                    e.line,
                    e.message.split(';').next().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    TemplatePart::Html,
                    Some(3),
                    "unknown variable `member.frist_name`".into()
                ),
                (TemplatePart::Html, Some(3), "unknown variable `x`".into()),
                (
                    TemplatePart::Text,
                    Some(1),
                    "unknown variable `unsubscribe_url.host`".into()
                ),
                (
                    TemplatePart::Text,
                    Some(2),
                    "unknown variable `sales.first`".into()
                ),
            ]
        );
        assert!(errs[0]
            .message
            .contains("first_name, name, email, locale, time_zone"));
    }

    #[test]
    fn loop_item_typos_are_caught_by_the_trial_render() {
        let src = source(
            "ok",
            "{% for sale in sales %}\n<b>{{ sale.headline }}</b>\n{{ sale.headlin }}\n{% endfor %}",
            None,
        );
        let errs = errors(&src);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].part, TemplatePart::Html);
        assert_eq!(errs[0].line, Some(3));
        assert!(errs[0].message.contains("undefined"), "{}", errs[0]);
    }

    #[test]
    fn unknown_filters_are_rejected() {
        let errs = errors(&source("{{ alert.subject | shout }}", "x", None));
        assert_eq!(errs[0].part, TemplatePart::Subject);
        assert!(errs[0].message.contains("unknown filter"), "{}", errs[0]);
    }

    #[test]
    fn oversized_parts_are_rejected_before_compiling() {
        let src = source(&"x".repeat(MAX_SUBJECT_SOURCE + 1), "ok", None);
        let errs = errors(&src);
        assert_eq!(
            errs,
            vec![TemplateError::new(
                TemplatePart::Subject,
                None,
                format!(
                    "is {} bytes long; the limit is {MAX_SUBJECT_SOURCE}",
                    MAX_SUBJECT_SOURCE + 1
                )
            )]
        );
        assert_eq!(
            errs[0].to_string(),
            format!("subject template: is 2001 bytes long; the limit is 2000")
        );
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let src = source(
            "ok",
            "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
            None,
        );
        let errs = errors(&src);
        assert!(errs[0].message.contains("too much work"), "{}", errs[0]);
    }

    #[test]
    fn raw_blocks_are_not_scanned_for_references() {
        let html = "{% raw %}{{ coupon }}{% endraw %}\n{{ coupon }}";
        let errs = errors(&source("ok", html, None));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(2));
    }

    #[test]
    fn the_schema_matches_the_render_context() {
        let example = serde_json::to_value(RenderContext::example()).unwrap();
        let top = example.as_object().unwrap();
        assert_eq!(top.len(), CONTEXT_SCHEMA.len());
        for (name, shape) in CONTEXT_SCHEMA {
            let value = &top[*name];
            let fields = match shape {
                Shape::Object(fields) => fields,
                Shape::List(fields) => {
                    assert!(value.as_array().is_some_and(|a| !a.is_empty()), "{name}");
                    fields
                }
                Shape::Scalar => {
                    assert!(value.is_string(), "{name}");
                    continue;
                }
            };
            let item = value.as_array().map_or(value, |a| &a[0]);
            let mut have: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut want = fields.to_vec();
            have.sort_unstable();
            want.sort_unstable();
            assert_eq!(have, want, "{name}");
        }
    }
}
