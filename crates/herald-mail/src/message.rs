//! An addressed email, ready for any transport, and its MIME form.

use std::collections::BTreeMap;

use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

/// Prefix of the header each custom arg becomes in MIME messages.
pub const CUSTOM_ARG_HEADER_PREFIX: &str = "X-Herald-";
/// Longest custom arg key.
pub const MAX_CUSTOM_ARG_KEY: usize = 64;
/// Longest custom arg value.
pub const MAX_CUSTOM_ARG_VALUE: usize = 1_000;
/// SendGrid refuses personalizations whose custom args exceed 10,000 bytes;
/// holding every transport to it keeps a message sendable on any of them.
pub const MAX_CUSTOM_ARGS_TOTAL: usize = 10_000;
/// Longest unsubscribe URL or mailto URI accepted.
pub const MAX_UNSUBSCRIBE_URI: usize = 2_000;

/// `List-Unsubscribe` targets. With an HTTP(S) URL the message also gets
/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058), which
/// mailbox providers only honour for `https` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUnsubscribe {
    pub url: String,
    /// A full `mailto:` URI, for clients that unsubscribe by email.
    pub mailto: Option<String>,
}

impl ListUnsubscribe {
    /// The `List-Unsubscribe` header value.
    pub fn header_value(&self) -> String {
        match &self.mailto {
            Some(mailto) => format!("<{}>, <{mailto}>", self.url),
            None => format!("<{}>", self.url),
        }
    }
}

/// The `List-Unsubscribe-Post` value RFC 8058 prescribes.
pub const LIST_UNSUBSCRIBE_POST: &str = "List-Unsubscribe=One-Click";

/// One member's email, addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    pub from: Mailbox,
    pub to: Mailbox,
    pub reply_to: Option<Mailbox>,
    pub subject: String,
    pub html: String,
    pub text: String,
    pub list_unsubscribe: Option<ListUnsubscribe>,
    /// Sent as `X-Herald-*` headers over SMTP and the outbox, as
    /// `custom_args` to SendGrid and as recipient `metadata` to SparkPost,
    /// so provider events can be matched back (`alert_id`, `member_id`, ...).
    pub custom_args: BTreeMap<String, String>,
    /// Without angle brackets, e.g. `a1.m7@herald.example.com`.
    pub message_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("subject is empty or contains a line break or control character")]
    BadSubject,
    #[error("message_id {0:?} must look like `left@right` without spaces or angle brackets")]
    BadMessageId(String),
    #[error("custom arg key {0:?} must be 1-{MAX_CUSTOM_ARG_KEY} characters of a-z, 0-9 and '_', starting with a letter")]
    BadCustomArgKey(String),
    #[error("custom arg {key:?} value is longer than {MAX_CUSTOM_ARG_VALUE} bytes or contains a control character")]
    BadCustomArgValue { key: String },
    #[error("custom args take {0} bytes; the limit is {MAX_CUSTOM_ARGS_TOTAL}")]
    CustomArgsTooLarge(usize),
    #[error("List-Unsubscribe {field} {value:?} must be a {scheme} URI of at most {MAX_UNSUBSCRIBE_URI} characters without spaces, '<', '>' or ','")]
    BadUnsubscribe {
        field: &'static str,
        value: String,
        scheme: &'static str,
    },
    #[error("building the MIME message failed: {0}")]
    Mime(String),
}

impl OutgoingEmail {
    /// A Message-ID that is the same every time one alert goes to one
    /// member, so a resend after a crash carries the same id and receiving
    /// systems can recognise the duplicate.
    pub fn message_id_for(alert_id: &str, member_id: &str, domain: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!(
            "{}.{}@{}",
            clean(alert_id),
            clean(member_id),
            clean_domain(domain)
        )
    }

    /// Checks everything a transport relies on; every transport runs it
    /// first and turns a failure into a permanent error.
    pub fn check(&self) -> Result<(), MessageError> {
        if self.subject.trim().is_empty() || self.subject.chars().any(char::is_control) {
            return Err(MessageError::BadSubject);
        }
        let id_ok = self
            .message_id
            .split_once('@')
            .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains('@'))
            && self
                .message_id
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '<' && c != '>');
        if !id_ok {
            return Err(MessageError::BadMessageId(self.message_id.clone()));
        }
        let mut total = 0;
        for (key, value) in &self.custom_args {
            let key_ok = key.len() <= MAX_CUSTOM_ARG_KEY
                && key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !key_ok {
                return Err(MessageError::BadCustomArgKey(key.clone()));
            }
            if value.len() > MAX_CUSTOM_ARG_VALUE || value.chars().any(char::is_control) {
                return Err(MessageError::BadCustomArgValue { key: key.clone() });
            }
            total += key.len() + value.len();
        }
        if total > MAX_CUSTOM_ARGS_TOTAL {
            return Err(MessageError::CustomArgsTooLarge(total));
        }
        if let Some(unsub) = &self.list_unsubscribe {
            check_uri("url", &unsub.url, &["https://", "http://"], "http(s)")?;
            if let Some(mailto) = &unsub.mailto {
                check_uri("mailto", mailto, &["mailto:"], "mailto:")?;
            }
        }
        Ok(())
    }

    /// The extra headers every transport sets: `List-Unsubscribe`,
    /// `List-Unsubscribe-Post` and one `X-Herald-*` per custom arg.
    pub fn extra_headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        if let Some(unsub) = &self.list_unsubscribe {
            headers.push(("List-Unsubscribe".to_owned(), unsub.header_value()));
            headers.push((
                "List-Unsubscribe-Post".to_owned(),
                LIST_UNSUBSCRIBE_POST.to_owned(),
            ));
        }
        for (key, value) in &self.custom_args {
            headers.push((custom_arg_header(key), value.clone()));
        }
        headers
    }

    /// The message as sent: RFC 5322 bytes, `multipart/alternative` with
    /// the text part first, then the HTML part (clients show the richest
    /// part they can). The same message as [`Self::to_mime`] formats, with
    /// its headers encoded by lettre too, written without building a lettre
    /// `Message`: several times cheaper, which counts at mailing-list rates.
    pub fn formatted(&self) -> Result<Vec<u8>, MessageError> {
        crate::mime::format(self)
    }

    /// The SMTP envelope: from the From address to the To address, as
    /// lettre derives it from those headers.
    pub fn envelope(&self) -> Result<Envelope, MessageError> {
        Envelope::new(Some(self.from.email.clone()), vec![self.to.email.clone()])
            .map_err(|e| MessageError::Mime(e.to_string()))
    }

    /// The message as a lettre `Message`, for code that needs one; sending
    /// uses [`Self::formatted`], which writes the same message faster.
    pub fn to_mime(&self) -> Result<lettre::Message, MessageError> {
        self.check()?;
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(self.to.clone())
            .subject(self.subject.clone())
            .message_id(Some(format!("<{}>", self.message_id)));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        for (name, value) in self.extra_headers() {
            let name =
                HeaderName::new_from_ascii(name).map_err(|e| MessageError::Mime(e.to_string()))?;
            builder = builder.raw_header(HeaderValue::new(name, value));
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                self.text.clone(),
                self.html.clone(),
            ))
            .map_err(|e| MessageError::Mime(e.to_string()))
    }

    /// Whether two emails differ only in who receives them and their
    /// per-recipient headers, so a provider can send them as one request.
    pub fn same_content(&self, other: &OutgoingEmail) -> bool {
        self.from == other.from
            && self.reply_to == other.reply_to
            && self.subject == other.subject
            && self.html == other.html
            && self.text == other.text
    }
}

/// `alert_id` → `X-Herald-Alert-Id`.
pub fn custom_arg_header(key: &str) -> String {
    let words: Vec<String> = key
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    format!("{CUSTOM_ARG_HEADER_PREFIX}{}", words.join("-"))
}

fn clean_domain(domain: &str) -> String {
    let cleaned: String = domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    if cleaned.is_empty() {
        "herald.invalid".to_owned()
    } else {
        cleaned
    }
}

fn check_uri(
    field: &'static str,
    value: &str,
    schemes: &[&str],
    scheme: &'static str,
) -> Result<(), MessageError> {
    let ok = value.len() <= MAX_UNSUBSCRIBE_URI
        && schemes
            .iter()
            .any(|s| value.len() > s.len() && value[..s.len()].eq_ignore_ascii_case(s))
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ','));
    if ok {
        Ok(())
    } else {
        Err(MessageError::BadUnsubscribe {
            field,
            value: value.chars().take(100).collect(),
            scheme,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn email(to: &str) -> OutgoingEmail {
        OutgoingEmail {
            from: "Herald <alerts@shop.example.com>".parse().unwrap(),
            to: to.parse().unwrap(),
            reply_to: Some("care@shop.example.com".parse().unwrap()),
            subject: "Acme is on sale — 50% off".to_owned(),
            html: "<p>Hello <b>Ada</b></p>".to_owned(),
            text: "Hello Ada".to_owned(),
            list_unsubscribe: Some(ListUnsubscribe {
                url: "https://herald.example.com/u/tok".to_owned(),
                mailto: Some("mailto:unsub@shop.example.com?subject=unsubscribe".to_owned()),
            }),
            custom_args: BTreeMap::from([
                ("alert_id".to_owned(), "a1".to_owned()),
                ("member_id".to_owned(), "m7".to_owned()),
            ]),
            message_id: OutgoingEmail::message_id_for("a1", "m7", "herald.example.com"),
        }
    }

    #[test]
    fn custom_args_become_x_herald_headers() {
        assert_eq!(custom_arg_header("alert_id"), "X-Herald-Alert-Id");
        assert_eq!(custom_arg_header("customer_key"), "X-Herald-Customer-Key");
        assert_eq!(custom_arg_header("shard"), "X-Herald-Shard");
    }

    #[test]
    fn message_ids_are_stable_and_safe() {
        let id = OutgoingEmail::message_id_for("a 1", "m<7>", "herald.example.com>");
        assert_eq!(id, "a_1.m_7_@herald.example.com");
        assert_eq!(
            id,
            OutgoingEmail::message_id_for("a 1", "m<7>", "herald.example.com>")
        );
        let mut e = email("ada@example.com");
        e.message_id = id;
        assert_eq!(e.check(), Ok(()));
    }

    #[test]
    fn mime_has_both_parts_and_all_headers() {
        let e = email("Ada <ada@example.com>");
        for raw in [e.to_mime().unwrap().formatted(), e.formatted().unwrap()] {
            let raw = String::from_utf8(raw).unwrap();
            for needle in [
                "Message-ID: <a1.m7@herald.example.com>",
                "List-Unsubscribe: <https://herald.example.com/u/tok>,",
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                "X-Herald-Alert-Id: a1",
                "X-Herald-Member-Id: m7",
                "Content-Type: multipart/alternative",
                "Content-Type: text/plain; charset=utf-8",
                "Content-Type: text/html; charset=utf-8",
                "Reply-To: care@shop.example.com",
            ] {
                assert!(raw.contains(needle), "missing {needle:?} in\n{raw}");
            }
        }
    }

    #[test]
    fn bad_messages_are_refused_with_the_field() {
        type Mutation = fn(&mut OutgoingEmail);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.subject = "two\r\nBcc: x@y".into(), "subject"),
            (|e| e.subject = "  ".into(), "subject"),
            (|e| e.message_id = "<x@y>".into(), "message_id"),
            (|e| e.message_id = "no-at-sign".into(), "message_id"),
            (
                |e| {
                    e.custom_args.insert("Alert-Id".into(), "x".into());
                },
                "custom arg key \"Alert-Id\"",
            ),
            (
                |e| {
                    e.custom_args.insert("note".into(), "a\nb".into());
                },
                "custom arg \"note\" value",
            ),
            (
                |e| {
                    for i in 0..20 {
                        e.custom_args.insert(format!("k{i}"), "v".repeat(900));
                    }
                },
                "the limit is 10000",
            ),
            (
                |e| {
                    e.list_unsubscribe.as_mut().unwrap().url = "javascript:alert(1)".into();
                },
                "List-Unsubscribe url",
            ),
            (
                |e| {
                    e.list_unsubscribe.as_mut().unwrap().url = "https://x/a>, <https://evil".into();
                },
                "List-Unsubscribe url",
            ),
            (
                |e| {
                    e.list_unsubscribe.as_mut().unwrap().mailto = Some("unsub@x".into());
                },
                "List-Unsubscribe mailto",
            ),
        ];
        for (mutate, needle) in cases {
            let mut e = email("ada@example.com");
            mutate(&mut e);
            let err = e.check().unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert!(e.to_mime().is_err());
            assert!(e.formatted().is_err());
        }
    }

    #[test]
    fn same_content_ignores_recipient_data_only() {
        let a = email("a@example.com");
        let mut b = email("b@example.com");
        b.custom_args.insert("member_id".into(), "m8".into());
        b.list_unsubscribe.as_mut().unwrap().url = "https://herald.example.com/u/other".into();
        assert!(a.same_content(&b));
        b.html.push('!');
        assert!(!a.same_content(&b));
    }
}
