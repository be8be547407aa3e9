//! Rendering one alert for many members: what does not depend on the
//! member is rendered, CSS-inlined and turned into text once per alert (and
//! set of brands), and each member's email is assembled by putting the
//! member's values into the gaps.
//!
//! A full render costs ~100 µs per member (the text part and the CSS
//! inlining each parse the whole HTML); assembling costs a few. It is only
//! done where it gives, byte for byte, the email a full render gives:
//! - the template uses `member` and `unsubscribe_url` only in output tags
//!   of their own (`{{ member.first_name | default("there") }}`, with pure
//!   filters), and has no macro, call, filter, autoescape or `set` block
//!   that could capture such a tag's output; each tag is replaced by a
//!   marker, and minijinja's own analysis must find no use of `member` or
//!   `unsubscribe_url` left in the result;
//! - in the HTML every marker sits in text or in a link or image attribute,
//!   which the HTML parser and the CSS inliner copy unchanged: checked per
//!   alert by inlining a probe value full of characters that need escaping
//!   and comparing; and no stylesheet selector looks at attributes;
//! - in a text part derived from the HTML, a member value is one word no
//!   wider than the width checked per alert, so the line breaks come out
//!   the same (checked by deriving the text with a one-column and a wide
//!   marker: word wrapping only breaks more as words grow);
//! - the member's values are plain: not empty or blank, no control
//!   characters.
//!
//! Anything else takes the full render, per member, as before.

use std::ops::RangeInclusive;
use std::sync::Arc;

use minijinja::{Environment, HtmlEscape, Value};
use unicode_width::UnicodeWidthStr;

use crate::render::{
    derive_text, inline_css, one_line, AlertContext, BrandContext, MemberContext, RenderContext,
    RenderError, RenderedEmail, SaleContext,
};
use crate::template::{environment, find, find_endraw, Template, TemplatePart, TemplateSource};

/// Markers are private-use characters of plane 15; a template, alert or
/// member holding any character of that plane takes the full render.
const RESERVED: RangeInclusive<char> = '\u{F0000}'..='\u{FFFFF}';
const MARKER_BASE: u32 = 0xF_0000;
/// Most distinct member tags one template may have for the fast path.
const MAX_SLOTS: usize = 200;
/// Between the values of the slot template's output.
const SEPARATOR: char = '\u{F0100}';
/// Widens a marker when probing the text part's line breaks.
const PAD: char = '\u{F0101}';
/// Widths a member value in the derived text part may take, widest first
/// (a link's address stands alone on its footnote line, so it may be long).
const TEXT_WIDTH_STEPS: [usize; 7] = [1024, 256, 64, 32, 16, 8, 4];
/// Put after each marker when probing the HTML: spaces and every character
/// the HTML serializer escapes in text or in attributes.
const PROBE_TAIL: &str = " &<>\"'\u{a0}/x=y ";
/// Attributes a member value may sit in (and only while no selector looks
/// at attributes).
const VALUE_ATTRIBUTES: [&str; 4] = ["href", "src", "alt", "title"];
const SLOTS_TEMPLATE: &str = "slots";
/// Names that read the whole context or other templates' output.
const FORBIDDEN_NAMES: [&str; 6] = ["self", "super", "caller", "varargs", "kwargs", "debug"];
/// Statements that capture output or bring in other templates.
const FORBIDDEN_STATEMENTS: [&str; 8] = [
    "macro",
    "call",
    "filter",
    "autoescape",
    "include",
    "import",
    "from",
    "extends",
];
/// What a member tag may name besides `member` and `unsubscribe_url`: pure
/// filters, tests and keywords.
const SLOT_NAMES: [&str; 30] = [
    "default",
    "d",
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "string",
    "replace",
    "truncate",
    "urlencode",
    "length",
    "is",
    "not",
    "and",
    "or",
    "in",
    "if",
    "else",
    "defined",
    "undefined",
    "none",
    "None",
    "true",
    "false",
    "True",
    "False",
    "number",
    "startingwith",
    "endingwith",
];
const MEMBER_NAMES: [&str; 2] = ["member", "unsubscribe_url"];

fn marker(slot: usize) -> char {
    // MAX_SLOTS keeps every marker inside the reserved plane.
    char::from_u32(MARKER_BASE + slot as u32).unwrap_or(PAD)
}

fn slot_of(c: char) -> Option<usize> {
    let code = c as u32;
    (MARKER_BASE..MARKER_BASE + MAX_SLOTS as u32)
        .contains(&code)
        .then(|| (code - MARKER_BASE) as usize)
}

fn has_reserved(s: &str) -> bool {
    s.chars().any(|c| RESERVED.contains(&c))
}

/// A template with its member tags replaced by markers, and a template
/// printing those tags' values.
#[derive(Debug)]
pub(crate) struct SlotPlan {
    skeleton: Environment<'static>,
    slots: Environment<'static>,
    count: usize,
}

impl SlotPlan {
    /// `None` when the template does not qualify.
    pub(crate) fn build(source: &TemplateSource) -> Option<SlotPlan> {
        let parts = [
            (TemplatePart::Subject, Some(&source.subject)),
            (TemplatePart::Html, Some(&source.html)),
            (TemplatePart::Text, source.text.as_ref()),
        ];
        let mut expressions = Vec::new();
        let mut skeleton = environment();
        for (part, text) in parts {
            let Some(text) = text else { continue };
            if has_reserved(text) {
                return None;
            }
            let rewritten = rewrite(text, &mut expressions)?;
            skeleton.add_template_owned(part.as_str(), rewritten).ok()?;
        }
        for (_, template) in skeleton.templates() {
            let names = template.undeclared_variables(false);
            if MEMBER_NAMES
                .iter()
                .chain(&FORBIDDEN_NAMES)
                .any(|n| names.contains(*n))
            {
                return None;
            }
        }
        let mut slots = environment();
        let source: Vec<String> = expressions
            .iter()
            .map(|e| format!("{{{{ {e} }}}}"))
            .collect();
        slots
            .add_template_owned(SLOTS_TEMPLATE, source.join(&SEPARATOR.to_string()))
            .ok()?;
        Some(SlotPlan {
            skeleton,
            slots,
            count: expressions.len(),
        })
    }

    /// The values of the member tags for one member, unescaped; `None` when
    /// a value is not plain or a tag fails (the full render then reports
    /// the failure as usual).
    fn values(&self, member: &MemberContext, unsubscribe_url: &str) -> Option<Vec<String>> {
        if self.count == 0 {
            return Some(Vec::new());
        }
        let ctx = minijinja::context! {
            member => Value::from(minijinja::value::Serde(member)),
            unsubscribe_url => unsubscribe_url,
        };
        let out = self
            .slots
            .get_template(SLOTS_TEMPLATE)
            .ok()?
            .render(ctx)
            .ok()?;
        let values: Vec<String> = out.split(SEPARATOR).map(str::to_owned).collect();
        let plain = |v: &String| {
            !v.trim().is_empty() && !v.chars().any(|c| c.is_control() || RESERVED.contains(&c))
        };
        (values.len() == self.count && values.iter().all(plain)).then_some(values)
    }
}

/// One `{{ }}` or `{% %}` tag of a template source.
struct Tag {
    expression: bool,
    /// The whole tag, delimiters included.
    start: usize,
    end: usize,
    /// Names used in it (not after a dot), outside string literals.
    names: Vec<String>,
}

/// The template source with each member tag replaced by a marker; the
/// tags' expressions are added to `expressions` (each once). `None` when
/// the template does not qualify.
fn rewrite(source: &str, expressions: &mut Vec<String>) -> Option<String> {
    let mut out = String::with_capacity(source.len());
    let mut copied = 0;
    for tag in scan(source)? {
        if tag
            .names
            .iter()
            .any(|n| FORBIDDEN_NAMES.contains(&n.as_str()))
        {
            return None;
        }
        let inner = &source[tag.start + 2..tag.end - 2];
        if !tag.expression {
            let first = inner
                .trim_matches(|c: char| c.is_whitespace() || "-+~".contains(c))
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .next()
                .unwrap_or_default();
            if FORBIDDEN_STATEMENTS.contains(&first) || (first == "set" && !inner.contains('=')) {
                return None;
            }
            continue;
        }
        let uses_member = tag.names.iter().any(|n| MEMBER_NAMES.contains(&n.as_str()));
        let only_slot_names = tag
            .names
            .iter()
            .all(|n| MEMBER_NAMES.contains(&n.as_str()) || SLOT_NAMES.contains(&n.as_str()));
        if !(uses_member && only_slot_names) {
            continue;
        }
        let lead = inner.chars().next().filter(|c| "-+~".contains(*c));
        let trail = inner.chars().last().filter(|c| "-+~".contains(*c));
        let expression = inner
            .trim_start_matches(|c: char| "-+~".contains(c))
            .trim_end_matches(|c: char| "-+~".contains(c))
            .trim();
        let slot = match expressions.iter().position(|e| e == expression) {
            Some(slot) => slot,
            None => {
                expressions.push(expression.to_owned());
                expressions.len() - 1
            }
        };
        if slot >= MAX_SLOTS {
            return None;
        }
        out.push_str(&source[copied..tag.start]);
        out.push_str("{{");
        out.extend(lead);
        out.push_str(" \"");
        out.push(marker(slot));
        out.push_str("\" ");
        out.extend(trail);
        out.push_str("}}");
        copied = tag.end;
    }
    out.push_str(&source[copied..]);
    Some(out)
}

/// The tags of a source, skipping comments and raw blocks; `None` for an
/// unterminated tag.
fn scan(source: &str) -> Option<Vec<Tag>> {
    let bytes = source.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"{#") {
            i += find(rest, b"#}")? + 2;
            continue;
        }
        let close: &[u8] = if rest.starts_with(b"{{") {
            b"}}"
        } else if rest.starts_with(b"{%") {
            b"%}"
        } else {
            i += 1;
            continue;
        };
        let start = i;
        let mut names = Vec::new();
        let mut after_dot = false;
        let mut j = i + 2;
        loop {
            let rest = bytes.get(j..)?;
            if rest.is_empty() {
                return None;
            }
            if rest.starts_with(close) {
                break;
            }
            let c = rest[0];
            if c == b'"' || c == b'\'' {
                j += 1;
                while *bytes.get(j)? != c {
                    if bytes[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                j += 1;
                after_dot = false;
            } else if c.is_ascii_alphabetic() || c == b'_' {
                let name_start = j;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                if !after_dot {
                    names.push(source[name_start..j].to_owned());
                }
                after_dot = false;
            } else if c.is_ascii_digit() {
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                after_dot = false;
            } else {
                if c == b'.' {
                    after_dot = true;
                } else if !c.is_ascii_whitespace() {
                    after_dot = false;
                }
                j += 1;
            }
        }
        let end = j + 2;
        let expression = close == b"}}";
        let is_raw = !expression && {
            let inner = &source[start + 2..end - 2];
            inner.trim_matches(|c: char| c.is_whitespace() || "-+~".contains(c)) == "raw"
        };
        tags.push(Tag {
            expression,
            start,
            end,
            names,
        });
        i = end;
        if is_raw {
            i += find_endraw(&bytes[i..])?;
        }
    }
    Some(tags)
}

/// Text cut at markers: `text[0]`, value of `slots[0]`, `text[1]`, ...
#[derive(Debug)]
struct Pieces<S> {
    text: Vec<String>,
    slots: Vec<S>,
}

impl Pieces<usize> {
    fn split(rendered: &str) -> Self {
        let mut text = vec![String::new()];
        let mut slots = Vec::new();
        for c in rendered.chars() {
            match slot_of(c) {
                Some(slot) => {
                    slots.push(slot);
                    text.push(String::new());
                }
                None => text.last_mut().expect("never empty").push(c),
            }
        }
        Pieces { text, slots }
    }

    fn assemble(&self, value: impl Fn(usize) -> String) -> String {
        let mut out = String::with_capacity(self.text.iter().map(String::len).sum::<usize>() + 64);
        for (i, text) in self.text.iter().enumerate() {
            out.push_str(text);
            if let Some(slot) = self.slots.get(i) {
                out.push_str(&value(*slot));
            }
        }
        out
    }
}

/// How the HTML serializer writes a value where a marker was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Text,
    Attribute,
}

impl Place {
    fn write(self, value: &str, out: &mut String) {
        for c in value.chars() {
            match (self, c) {
                (_, '&') => out.push_str("&amp;"),
                (_, '\u{a0}') => out.push_str("&nbsp;"),
                (Place::Text, '<') => out.push_str("&lt;"),
                (Place::Text, '>') => out.push_str("&gt;"),
                (Place::Attribute, '"') => out.push_str("&quot;"),
                _ => out.push(c),
            }
        }
    }

    fn escaped(self, value: &str) -> String {
        let mut out = String::with_capacity(value.len() + 16);
        self.write(value, &mut out);
        out
    }
}

/// Where the text part comes from.
#[derive(Debug)]
enum TextPlan {
    /// The template's own text part.
    Own(Pieces<usize>),
    /// Derived from the HTML; the values of `slots` must be single words of
    /// at most `max_width[slot]` columns, else it is derived per member.
    Derived {
        pieces: Pieces<usize>,
        max_width: Vec<usize>,
    },
    /// Derived per member from the HTML before inlining.
    PerMember,
}

#[derive(Debug)]
struct Fast {
    plan_slots: usize,
    subject: Pieces<usize>,
    /// The HTML before inlining (for a text part derived per member).
    html: Pieces<usize>,
    inlined: Pieces<(usize, Place)>,
    text: TextPlan,
}

/// Everything of one alert that does not depend on the member, ready to
/// render for many members ([`PreparedAlert::render`]).
#[derive(Debug)]
pub struct PreparedAlert {
    template: Arc<Template>,
    alert: AlertContext,
    brands: Vec<BrandContext>,
    sales: Vec<SaleContext>,
    fast: Option<Fast>,
}

#[derive(serde::Serialize)]
struct SharedContext<'a> {
    alert: &'a AlertContext,
    brands: &'a [BrandContext],
    sales: &'a [SaleContext],
}

impl PreparedAlert {
    pub fn new(
        template: Arc<Template>,
        alert: AlertContext,
        brands: Vec<BrandContext>,
        sales: Vec<SaleContext>,
    ) -> Self {
        let fast = template
            .plan
            .as_ref()
            .and_then(|plan| Fast::build(plan, &template, &alert, &brands, &sales));
        Self {
            template,
            alert,
            brands,
            sales,
            fast,
        }
    }

    /// Whether members get the assembled email rather than a full render
    /// (when their values are plain).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The email for one member: what [`Template::render`] gives for the
    /// whole context, assembled when possible.
    pub fn render(
        &self,
        member: &MemberContext,
        unsubscribe_url: &str,
    ) -> Result<RenderedEmail, RenderError> {
        if let Some(email) = self.fast.as_ref().and_then(|fast| {
            let plan = self.template.plan.as_ref()?;
            fast.render(plan.values(member, unsubscribe_url)?)
        }) {
            return Ok(email);
        }
        self.template.render(&RenderContext {
            member: member.clone(),
            alert: self.alert.clone(),
            brands: self.brands.clone(),
            sales: self.sales.clone(),
            unsubscribe_url: unsubscribe_url.to_owned(),
        })
    }
}

impl Fast {
    fn build(
        plan: &SlotPlan,
        template: &Template,
        alert: &AlertContext,
        brands: &[BrandContext],
        sales: &[SaleContext],
    ) -> Option<Fast> {
        let shared = SharedContext {
            alert,
            brands,
            sales,
        };
        if has_reserved(&serde_json::to_string(&shared).ok()?) {
            return None;
        }
        let ctx = Value::from(minijinja::value::Serde(&shared));
        let render = |part: TemplatePart| -> Option<Option<String>> {
            match plan.skeleton.get_template(part.as_str()) {
                Ok(t) => t.render(&ctx).ok().map(Some),
                Err(_) => Some(None),
            }
        };
        let subject = render(TemplatePart::Subject)??;
        let html = render(TemplatePart::Html)??;
        let own_text = render(TemplatePart::Text)?;
        if own_text.is_some() != template.has_text() {
            return None;
        }
        let inlined = inline_plan(&html)?;
        let text = match own_text {
            Some(text) => TextPlan::Own(Pieces::split(&text)),
            None => text_plan(&html)?,
        };
        Some(Fast {
            plan_slots: plan.count,
            subject: Pieces::split(&subject),
            html: Pieces::split(&html),
            inlined,
            text,
        })
    }

    fn render(&self, values: Vec<String>) -> Option<RenderedEmail> {
        if values.len() != self.plan_slots {
            return None;
        }
        let raw = |slot: usize| values[slot].clone();
        let subject = one_line(&self.subject.assemble(raw));
        if subject.is_empty() {
            return None;
        }
        let mut html =
            String::with_capacity(self.inlined.text.iter().map(String::len).sum::<usize>() + 256);
        for (i, text) in self.inlined.text.iter().enumerate() {
            html.push_str(text);
            if let Some((slot, place)) = self.inlined.slots.get(i) {
                place.write(&values[*slot], &mut html);
            }
        }
        let text = match &self.text {
            TextPlan::Own(pieces) => pieces.assemble(raw),
            TextPlan::Derived { pieces, max_width }
                if pieces
                    .slots
                    .iter()
                    .all(|slot| is_word(&values[*slot], max_width[*slot])) =>
            {
                pieces.assemble(raw)
            }
            TextPlan::Derived { .. } | TextPlan::PerMember => {
                let html = self
                    .html
                    .assemble(|slot| HtmlEscape(&values[slot]).to_string());
                derive_text(&html).ok()?
            }
        };
        Some(RenderedEmail {
            subject,
            html,
            text,
        })
    }
}

/// One word as the text renderer sees it, at most `max_width` columns.
fn is_word(value: &str, max_width: usize) -> bool {
    !value.is_empty()
        && value.width() <= max_width
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\u{a0}' || c == '\u{200b}')
}

/// The inlined HTML cut at the markers, each with how its value is written
/// there; `None` when a marker sits anywhere else, or a value there could
/// change what the inliner does.
fn inline_plan(html: &str) -> Option<Pieces<(usize, Place)>> {
    let plain = Pieces::split(&inline_css(html).ok()?);
    let probe = html
        .chars()
        .map(|c| match slot_of(c) {
            Some(_) => HtmlEscape(&format!(" {c}{PROBE_TAIL}")).to_string(),
            None => c.to_string(),
        })
        .collect::<String>();
    let probed = inline_css(&probe).ok()?;
    let forms = [Place::Text, Place::Attribute].map(|p| (p, p.escaped(PROBE_TAIL)));
    let mut rest = probed.as_str();
    let mut slots = Vec::with_capacity(plain.slots.len());
    let mut before = String::new();
    for (i, text) in plain.text.iter().enumerate() {
        rest = rest.strip_prefix(text.as_str())?;
        before.push_str(text);
        let Some(&slot) = plain.slots.get(i) else {
            break;
        };
        rest = rest.strip_prefix(' ')?.strip_prefix(marker(slot))?;
        let (place, form) = forms
            .iter()
            .find(|(_, form)| rest.starts_with(form.as_str()))?;
        rest = &rest[form.len()..];
        if *place == Place::Attribute && !value_attribute(&before) {
            return None;
        }
        slots.push((slot, *place));
        before.push(marker(slot));
    }
    if !rest.is_empty() {
        return None;
    }
    if slots.iter().any(|(_, p)| *p == Place::Attribute) && styles_read_attributes(html) {
        return None;
    }
    Some(Pieces {
        text: plain.text,
        slots,
    })
}

/// Whether the attribute whose value is open at the end of `before` (as
/// the serializer writes it: `name="value`) is one a value may sit in.
fn value_attribute(before: &str) -> bool {
    let Some(quote) = before.rfind('"') else {
        return false;
    };
    let Some(head) = before[..quote].strip_suffix('=') else {
        return false;
    };
    let name_start = head
        .rfind(|c: char| c.is_whitespace() || c == '<')
        .map_or(0, |i| i + 1);
    VALUE_ATTRIBUTES
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&head[name_start..]))
}

/// Whether a `<style>` block could select elements by attribute values.
fn styles_read_attributes(html: &str) -> bool {
    let lower = html.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(open) = rest.find("<style") {
        let body = &rest[open..];
        let end = body.find("</style").unwrap_or(body.len());
        let css = &body[..end];
        if css.contains('[') || css.contains(":lang") || css.contains(":dir") {
            return true;
        }
        rest = &body[end..];
    }
    false
}

/// How the text part derived from `html` can be assembled.
fn text_plan(html: &str) -> Option<TextPlan> {
    let lower = html.to_ascii_lowercase();
    // Tables lay columns out by content width and preformatted text keeps
    // its spacing: word lengths there change more than their own lines.
    if lower.contains("<table") || lower.contains("<pre") || lower.contains("white-space") {
        return Some(TextPlan::PerMember);
    }
    let short = derive_text(html).ok()?;
    let pieces = Pieces::split(&short);
    let count = pieces.slots.iter().max().map_or(0, |m| m + 1);
    // The widest each value may be with the others at one column, then all
    // of them at once: breaks depend on each width monotonically, so what
    // holds with every value at its widest holds for any narrower values.
    let unchanged = |widths: &[usize]| {
        let wide: String = html
            .chars()
            .map(|c| match slot_of(c) {
                Some(slot) => {
                    let pad = widths.get(slot).copied().unwrap_or(1).saturating_sub(1);
                    std::iter::once(c)
                        .chain(std::iter::repeat_n(PAD, pad))
                        .collect()
                }
                None => c.to_string(),
            })
            .collect();
        derive_text(&wide).is_ok_and(|long| long.replace(PAD, "") == short)
    };
    let mut max_width = vec![1; count];
    for slot in 0..count {
        if !pieces.slots.contains(&slot) {
            continue;
        }
        let mut widths = vec![1; count];
        for width in TEXT_WIDTH_STEPS {
            widths[slot] = width;
            if unchanged(&widths) {
                max_width[slot] = width;
                break;
            }
        }
        if max_width[slot] == 1 {
            return Some(TextPlan::PerMember);
        }
    }
    while !unchanged(&max_width) {
        if max_width.iter().all(|w| *w <= 1) {
            return Some(TextPlan::PerMember);
        }
        for w in &mut max_width {
            *w = (*w / 2).max(1);
        }
    }
    Some(TextPlan::Derived { pieces, max_width })
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_width::UnicodeWidthChar;

    fn template(subject: &str, html: &str, text: Option<&str>) -> Arc<Template> {
        Arc::new(
            Template::compile(&TemplateSource {
                subject: subject.to_owned(),
                html: html.to_owned(),
                text: text.map(str::to_owned),
            })
            .unwrap(),
        )
    }

    fn prepare(t: &Arc<Template>) -> PreparedAlert {
        let ex = RenderContext::example();
        PreparedAlert::new(t.clone(), ex.alert, ex.brands, ex.sales)
    }

    fn members() -> Vec<(MemberContext, String)> {
        let base = RenderContext::example().member;
        let names: [Option<&str>; 9] = [
            Some("Ada"),
            None,
            Some("Tom & <Jerry> \"Q\" 'x' /"),
            Some("Mary Ann"),
            Some("Bartholomew-Maximilian-Alexander-Konstantin-von-Habsburg-Lothringen-Este"),
            Some(""),
            Some("  "),
            Some("Zoë\u{a0}Ö"),
            Some("tab\there"),
        ];
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let member = MemberContext {
                    first_name: name.map(str::to_owned),
                    name: name.map(|n| format!("{n} Lovelace")),
                    email: format!("m{i}+x&y@example.com"),
                    ..base.clone()
                };
                let url = format!(
                    "https://herald.example.com/unsubscribe/tok{i}-{}",
                    "ab".repeat(i * 7)
                );
                (member, url)
            })
            .collect()
    }

    /// Every member gets exactly what the full render gives (or the same
    /// error).
    fn assert_same_as_full_render(t: &Arc<Template>) -> PreparedAlert {
        let prepared = prepare(t);
        for (member, url) in members() {
            let mut ctx = RenderContext::example();
            ctx.member = member.clone();
            ctx.unsubscribe_url = url.clone();
            let full = t.render(&ctx);
            let fast = prepared.render(&member, &url);
            assert_eq!(fast, full, "member {member:?}");
        }
        prepared
    }

    const DEMO_LIKE: &str = r#"<!doctype html>
<html><head><style>
  body { margin: 0; color: #222; }
  .head { background: #1f3a5f; color: #fff; padding: 24px; }
  .sale h2 { margin: 0 0 8px; }
  .button { display: inline-block; background: #e4572e; }
  @media (max-width: 600px) { .head { padding: 8px } }
</style></head>
<body><div class="wrap">
  <div class="head">Hello {{ member.first_name | default("there") }}, your brands are on sale</div>
  {% for sale in sales %}
  <div class="sale"><h2>{{ sale.headline }}</h2>
    <p>{{ sale.brand }} &middot; from {{ sale.starts_at }}{% if sale.ends_at %} until {{ sale.ends_at }}{% endif %}</p>
    <a class="button" href="{{ sale.url }}">Shop {{ sale.brand }}</a></div>
  {% endfor %}
  <div class="foot">You get this email because you follow {% for brand in brands %}{{ brand.name }}{% if not loop.last %}, {% endif %}{% endfor %}.
    <a href="{{ unsubscribe_url }}">Unsubscribe from brand alerts</a>. Sent to {{- member.email -}} .</div>
</div></body></html>
"#;

    #[test]
    fn markers_are_one_column_wide() {
        assert_eq!(UnicodeWidthChar::width(marker(0)), Some(1));
        assert_eq!(UnicodeWidthChar::width(marker(MAX_SLOTS - 1)), Some(1));
        assert_eq!(UnicodeWidthChar::width(PAD), Some(1));
        assert_eq!(slot_of(marker(7)), Some(7));
        assert_eq!(slot_of(SEPARATOR), None);
    }

    #[test]
    fn a_demo_like_template_is_assembled_and_equals_the_full_render() {
        let t = template(
            "{{ alert.subject }} for {{ member.first_name | default('you') }}",
            DEMO_LIKE,
            None,
        );
        let prepared = assert_same_as_full_render(&t);
        assert!(prepared.is_fast());
        let Some(Fast { text, inlined, .. }) = &prepared.fast else {
            unreachable!()
        };
        let TextPlan::Derived { max_width, .. } = text else {
            panic!("{text:?}")
        };
        // The first name sits in a sentence; the link stands alone on its
        // footnote line.
        assert!((16..256).contains(&max_width[1]), "{max_width:?}");
        assert!(max_width[2] >= 256, "{max_width:?}");
        assert!(
            inlined.slots.contains(&(2, Place::Attribute)),
            "{inlined:?}"
        );
    }

    #[test]
    fn an_own_text_part_is_assembled() {
        let t = template(
            "Hi {{ member.first_name | default('there') | upper }}",
            "<p>{{ member.name | default('') }}</p><img alt=\"{{ member.email }}\" src=\"x.png\">",
            Some("Hi {{ member.name | default('you') }}\nBye: {{ unsubscribe_url }}"),
        );
        assert!(assert_same_as_full_render(&t).is_fast());
    }

    #[test]
    fn templates_that_use_the_member_otherwise_take_the_full_render() {
        for html in [
            "{% if member.first_name is defined %}<p>Hi {{ member.first_name }}</p>{% endif %}",
            "{% set who %}{{ member.first_name | default('x') }}{% endset %}<p>{{ who | upper }}</p>",
            "{% filter upper %}<p>{{ member.email }}</p>{% endfilter %}",
            "{% macro hi() %}{{ member.email }}{% endmacro %}<p>{{ hi() | length }}</p>",
            "{% for s in sales %}<p>{{ member.email ~ s.brand }}</p>{% endfor %}",
            "<p>{{ debug() | length }}{{ member.email }}</p>",
            "{% autoescape false %}<p>{{ member.email }}</p>{% endautoescape %}",
        ] {
            let t = template("s", html, None);
            let prepared = assert_same_as_full_render(&t);
            assert!(!prepared.is_fast(), "{html}");
        }
    }

    #[test]
    fn values_where_the_html_or_its_styles_depend_on_them_take_the_full_render() {
        for html in [
            // A selector on the attribute that holds a member value.
            "<style>a[href^=\"https\"] { color: red }</style><a href=\"{{ unsubscribe_url }}\">x</a>",
            // A class from a member value.
            "<style>.en-GB { color: red }</style><p class=\"{{ member.locale }}\">x</p>",
            // Inside a style block or a comment.
            "<style>p { color: {{ member.locale }} }</style><p>x</p>",
            "<!-- {{ member.email }} --><p>x</p>",
            // Unquoted attribute: a value with a space would end it.
            "<a href={{ member.email }}>x</a>",
        ] {
            let t = template("s", html, None);
            let prepared = assert_same_as_full_render(&t);
            assert!(!prepared.is_fast(), "{html}");
        }
    }

    #[test]
    fn tables_and_narrow_text_still_give_the_full_render_text() {
        for html in [
            "<table><tr><td>Hello {{ member.first_name | default('x') }}</td><td>{{ sales | length }} sales for you today and more words to wrap</td></tr></table>",
            &format!("<p>{} {{{{ member.first_name | default('x') }}}} {}</p>", "word ".repeat(14), "more ".repeat(20)),
            "<pre>{{ member.email }}      spaced</pre>",
        ] {
            let t = template("s", html, None);
            assert_same_as_full_render(&t);
        }
    }

    #[test]
    fn tags_are_scanned_around_strings_comments_and_raw_blocks() {
        let mut expressions = Vec::new();
        let source = "{# {{ member.email }} #}{% raw %}{{ member.email }}{% endraw %}\
                      {{- member.first_name | default(\"}}\") -}}{{ 'member' }}{{ sales.0.brand }}";
        let out = rewrite(source, &mut expressions).unwrap();
        assert_eq!(expressions, ["member.first_name | default(\"}}\")"]);
        assert_eq!(
            out,
            format!(
                "{{# {{{{ member.email }}}} #}}{{% raw %}}{{{{ member.email }}}}{{% endraw %}}\
                 {{{{- \"{}\" -}}}}{{{{ 'member' }}}}{{{{ sales.0.brand }}}}",
                marker(0)
            )
        );
        assert!(rewrite("{{ member.email", &mut Vec::new()).is_none());
    }
}
