//! Rendering a template for one member: subject, HTML with its CSS inlined
//! (mail clients drop `<style>` blocks or parts of them), and a text part.

use minijinja::Value;

use crate::template::{Template, TemplateError, TemplatePart};

/// Width the derived text part wraps at: the conventional 78 columns of
/// plain-text mail (RFC 5322 recommends lines of at most 78 characters).
const TEXT_WIDTH: usize = 78;

/// Everything a template can use. Optional fields are left out of the
/// context when absent, so a template that uses one without a `default` or
/// `is defined` guard fails for that member with a reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenderContext {
    pub member: MemberContext,
    pub alert: AlertContext,
    pub brands: Vec<BrandContext>,
    pub sales: Vec<SaleContext>,
    /// The one-click unsubscribe page for this member and alert.
    pub unsubscribe_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// An IANA zone name such as `Europe/Paris`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlertContext {
    pub id: String,
    /// The alert's own subject line, as marketing wrote it.
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrandContext {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaleContext {
    /// The brand's display name.
    pub brand: String,
    pub headline: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Already formatted for display by the caller (Herald passes RFC 3339).
    pub starts_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

impl RenderContext {
    /// Example data with every optional field present and two of each list
    /// item; used to trial-render templates on save and for previews.
    pub fn example() -> Self {
        let sale = |brand: &str, headline: &str, slug: &str| SaleContext {
            brand: brand.to_owned(),
            headline: headline.to_owned(),
            url: format!("https://shop.example.com/sales/{slug}"),
            image: Some(format!("https://shop.example.com/img/{slug}.jpg")),
            starts_at: "2030-05-01T12:00:00Z".to_owned(),
            ends_at: Some("2030-05-04T12:00:00Z".to_owned()),
        };
        Self {
            member: MemberContext {
                first_name: Some("Ada".to_owned()),
                name: Some("Ada Lovelace".to_owned()),
                email: "ada@example.com".to_owned(),
                locale: Some("en-GB".to_owned()),
                time_zone: Some("Europe/London".to_owned()),
            },
            alert: AlertContext {
                id: "01890f6e-0000-7000-8000-000000000001".to_owned(),
                subject: "Your brands are on sale".to_owned(),
            },
            brands: vec![
                BrandContext {
                    id: "brand-1".to_owned(),
                    name: "Acme".to_owned(),
                },
                BrandContext {
                    id: "brand-2".to_owned(),
                    name: "Globex".to_owned(),
                },
            ],
            sales: vec![
                sale("Acme", "Acme: up to 50% off", "acme-spring"),
                sale("Globex", "Globex weekend sale", "globex-weekend"),
            ],
            unsubscribe_url: "https://herald.example.com/unsubscribe/example-token".to_owned(),
        }
    }
}

/// One member's email, ready to be addressed and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// One line: whitespace runs (including newlines) collapse to a space.
    pub subject: String,
    /// With the CSS of `<style>` blocks inlined into `style` attributes.
    pub html: String,
    /// The template's text part, or a text version of the HTML.
    pub text: String,
}

/// Why one member's email could not be rendered; the message is meant for
/// the dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("inlining the CSS failed: {0}")]
    Css(String),
    #[error("deriving the text part from the HTML failed: {0}")]
    Text(String),
}

impl Template {
    /// Renders the email for one member.
    pub fn render(&self, ctx: &RenderContext) -> Result<RenderedEmail, RenderError> {
        let value = Value::from(minijinja::value::Serde(ctx));
        let part = |p| self.render_part(p, &value);
        let subject = one_line(&part(TemplatePart::Subject)?.unwrap_or_default());
        if subject.is_empty() {
            return Err(TemplateError {
                part: TemplatePart::Subject,
                line: None,
                message: "rendered to an empty subject".to_owned(),
            }
            .into());
        }
        let html = part(TemplatePart::Html)?.unwrap_or_default();
        let text = match part(TemplatePart::Text)? {
            Some(text) => text,
            None => derive_text(&html)?,
        };
        let html = inline_css(&html)?;
        Ok(RenderedEmail {
            subject,
            html,
            text,
        })
    }
}

/// The text part of an HTML body.
pub(crate) fn derive_text(html: &str) -> Result<String, RenderError> {
    // A wrapped URL is a broken link, so links may overrun the width.
    html2text::config::plain()
        .no_link_wrapping()
        .allow_width_overflow()
        .string_from_read(html.as_bytes(), TEXT_WIDTH)
        .map_err(|e| RenderError::Text(e.to_string()))
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn inline_css(html: &str) -> Result<String, RenderError> {
    // Remote stylesheets stay unloaded: fetching URLs named by a template
    // while sending would let template authors make the mailer do requests.
    // `@media` rules cannot be inlined, so they stay in a `<style>` block for
    // the clients that honour them.
    let inliner = css_inline::CSSInliner::options()
        .load_remote_stylesheets(false)
        .keep_at_rules(true)
        .build();
    inliner
        .inline(html)
        .map_err(|e| RenderError::Css(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::TemplateSource;

    fn template(subject: &str, html: &str, text: Option<&str>) -> Template {
        Template::compile(&TemplateSource {
            subject: subject.to_owned(),
            html: html.to_owned(),
            text: text.map(str::to_owned),
        })
        .unwrap()
    }

    #[test]
    fn renders_all_parts_with_inlined_css() {
        let t = template(
            "{{ alert.subject }}, {{ member.first_name }}",
            "<html><head><style>p.hi { color: red } @media (max-width: 600px) { p { color: blue } }</style></head>\
             <body><p class=\"hi\">Hi {{ member.first_name }}</p>\
             {% for sale in sales %}<a href=\"{{ sale.url }}\">{{ sale.headline }}</a>{% endfor %}</body></html>",
            Some("Hi {{ member.first_name }}, {{ sales | length }} sales"),
        );
        let email = t.render(&RenderContext::example()).unwrap();
        assert_eq!(email.subject, "Your brands are on sale, Ada");
        assert!(
            email
                .html
                .contains(r#"<p class="hi" style="color: red;">Hi Ada</p>"#),
            "{}",
            email.html
        );
        assert!(
            email.html.contains("@media (max-width: 600px)"),
            "{}",
            email.html
        );
        assert!(email
            .html
            .contains("https://shop.example.com/sales/acme-spring"));
        assert_eq!(email.text, "Hi Ada, 2 sales");
    }

    #[test]
    fn html_is_escaped_but_subject_and_text_are_not() {
        let t = template(
            "{{ member.name }}",
            "<p>{{ member.name }}</p>",
            Some("{{ member.name }}"),
        );
        let mut ctx = RenderContext::example();
        ctx.member.name = Some("Tom & <Jerry>".to_owned());
        let email = t.render(&ctx).unwrap();
        assert_eq!(email.subject, "Tom & <Jerry>");
        assert_eq!(email.text, "Tom & <Jerry>");
        assert!(
            email.html.contains("<p>Tom &amp; &lt;Jerry&gt;</p>"),
            "{}",
            email.html
        );
        assert!(!email.html.contains("<Jerry>"));
    }

    #[test]
    fn missing_member_field_fails_that_member_with_its_line() {
        let t = template("Hi", "<p>\n{{ member.first_name }}</p>", None);
        let mut ctx = RenderContext::example();
        ctx.member.first_name = None;
        let err = t.render(&ctx).unwrap_err();
        let RenderError::Template(err) = err else {
            panic!("expected a template error, got {err:?}")
        };
        assert_eq!(err.part, TemplatePart::Html);
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("undefined"), "{err}");
        // The same template works for a member who has the field.
        assert!(t.render(&RenderContext::example()).is_ok());
    }

    #[test]
    fn guarded_optional_fields_render_for_members_without_them() {
        let t = template(
            "Hi {{ member.first_name | default('there') }}",
            "{% if member.first_name is defined %}x{% else %}y{% endif %}",
            None,
        );
        let mut ctx = RenderContext::example();
        ctx.member.first_name = None;
        let email = t.render(&ctx).unwrap();
        assert_eq!(email.subject, "Hi there");
        assert!(email.html.contains('y'));
    }

    #[test]
    fn subject_is_one_line_and_never_empty() {
        let t = template("  Big\r\n  sale\t{{ alert.id | length }} ", "x", None);
        assert_eq!(
            t.render(&RenderContext::example()).unwrap().subject,
            "Big sale 36"
        );
        let empty = template("{{ '' }}  ", "x", None);
        let err = empty.render(&RenderContext::example()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "subject template: rendered to an empty subject"
        );
    }

    #[test]
    fn long_links_in_the_derived_text_stay_on_one_line() {
        let t = template(
            "s",
            "<p>Bye: <a href=\"{{ unsubscribe_url }}\">unsubscribe</a></p>",
            None,
        );
        let mut ctx = RenderContext::example();
        ctx.unsubscribe_url = format!("https://herald.example.com/unsubscribe/{}", "x".repeat(120));
        let email = t.render(&ctx).unwrap();
        assert!(
            email
                .text
                .lines()
                .any(|l| l.ends_with(&ctx.unsubscribe_url)),
            "{}",
            email.text
        );
    }

    #[test]
    fn text_part_is_derived_from_html_when_absent() {
        let t = template(
            "s",
            "<style>h1 { color: red }</style><h1>Acme sale</h1><p>Up to <b>50%</b> off at <a href=\"https://shop.example.com/a\">the shop</a>.</p>",
            None,
        );
        let email = t.render(&RenderContext::example()).unwrap();
        assert!(email.text.contains("Acme sale"), "{}", email.text);
        assert!(email.text.contains("50%"), "{}", email.text);
        assert!(
            email.text.contains("https://shop.example.com/a"),
            "{}",
            email.text
        );
        assert!(
            email.text.lines().all(|l| l.chars().count() <= TEXT_WIDTH),
            "{}",
            email.text
        );
        assert!(!email.text.contains("<"), "{}", email.text);
        assert!(!email.text.contains("color"), "{}", email.text);
    }
}
