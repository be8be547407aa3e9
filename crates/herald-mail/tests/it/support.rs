//! Emails built the way the mailer will build them, and checks on their
//! MIME form as a receiving system parses it.

use std::collections::BTreeMap;

use herald_mail::{
    ListUnsubscribe, OutgoingEmail, RenderContext, Template, TemplateSource, UnsubscribeSigner,
};
use mailparse::MailHeaderMap;

pub const SIGNING_KEY: &[u8] = b"test signing key, 32 bytes long!";

pub fn template() -> Template {
    Template::compile(&TemplateSource {
        subject: "{{ member.first_name }}, {{ brands | map(attribute='name') | join(' & ') }} on sale ✨".into(),
        html: r#"<html><head><style>.cta { color: #c00; font-weight: bold }</style></head><body>
<p>Hi {{ member.first_name }},</p>
{% for sale in sales %}<p><a class="cta" href="{{ sale.url }}">{{ sale.headline }}</a></p>{% endfor %}
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>"#
            .into(),
        text: None,
    })
    .expect("test template compiles")
}

/// Renders the test template for `to` and addresses it like the mailer.
pub fn email(to: &str, alert_id: &str, member_id: &str) -> OutgoingEmail {
    let signer = UnsubscribeSigner::new(SIGNING_KEY).unwrap();
    let unsubscribe_url = signer
        .url(
            "https://herald.example.com/unsubscribe",
            alert_id,
            member_id,
        )
        .unwrap();
    let mut ctx = RenderContext::example();
    ctx.member.email = to.to_owned();
    ctx.alert.id = alert_id.to_owned();
    ctx.unsubscribe_url = unsubscribe_url.clone();
    let rendered = template().render(&ctx).expect("test template renders");
    OutgoingEmail {
        from: "Shop Alerts <alerts@shop.example.com>".parse().unwrap(),
        to: format!("Ada Lovelace <{to}>").parse().unwrap(),
        reply_to: Some("care@shop.example.com".parse().unwrap()),
        subject: rendered.subject,
        html: rendered.html,
        text: rendered.text,
        list_unsubscribe: Some(ListUnsubscribe {
            url: unsubscribe_url,
            mailto: Some("mailto:unsubscribe@shop.example.com".into()),
        }),
        custom_args: BTreeMap::from([
            ("alert_id".to_owned(), alert_id.to_owned()),
            ("member_id".to_owned(), member_id.to_owned()),
            ("customer_key".to_owned(), format!("cust-{member_id}")),
        ]),
        message_id: OutgoingEmail::message_id_for(alert_id, member_id, "herald.example.com"),
    }
}

fn header(parsed: &mailparse::ParsedMail<'_>, name: &str) -> String {
    parsed
        .headers
        .get_first_value(name)
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Parses `raw` and checks that it carries everything in `email`: headers,
/// unsubscribe headers with a token that verifies, custom args as
/// `X-Herald-*` headers, and both parts, decoded.
pub fn assert_mime_matches(raw: &[u8], email: &OutgoingEmail) {
    let parsed = mailparse::parse_mail(raw).expect("message parses");
    assert_eq!(header(&parsed, "Subject"), email.subject);
    assert!(email.subject.contains('✨'), "the subject needs encoding");
    assert_eq!(
        header(&parsed, "From"),
        r#""Shop Alerts" <alerts@shop.example.com>"#
    );
    assert!(header(&parsed, "To").contains(&email.to.email.to_string()));
    assert_eq!(header(&parsed, "Reply-To"), "care@shop.example.com");
    assert_eq!(
        header(&parsed, "Message-ID"),
        format!("<{}>", email.message_id)
    );
    assert!(parsed.headers.get_first_value("Date").is_some());

    let unsub = header(&parsed, "List-Unsubscribe");
    let url = unsub
        .strip_prefix('<')
        .and_then(|s| s.split_once('>'))
        .map(|(url, _)| url.to_owned())
        .expect("List-Unsubscribe starts with <url>");
    assert!(
        url.starts_with("https://herald.example.com/unsubscribe/"),
        "{url}"
    );
    assert!(
        unsub.ends_with(", <mailto:unsubscribe@shop.example.com>"),
        "{unsub}"
    );
    let token = url.rsplit('/').next().unwrap();
    let claim = UnsubscribeSigner::new(SIGNING_KEY)
        .unwrap()
        .verify(token)
        .unwrap();
    assert_eq!(claim.alert_id, email.custom_args["alert_id"]);
    assert_eq!(claim.member_id, email.custom_args["member_id"]);
    assert_eq!(
        header(&parsed, "List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    assert_eq!(
        header(&parsed, "X-Herald-Alert-Id"),
        email.custom_args["alert_id"]
    );
    assert_eq!(
        header(&parsed, "X-Herald-Member-Id"),
        email.custom_args["member_id"]
    );
    assert_eq!(
        header(&parsed, "X-Herald-Customer-Key"),
        email.custom_args["customer_key"]
    );

    assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
    assert_eq!(parsed.subparts.len(), 2);
    let (text, html) = (&parsed.subparts[0], &parsed.subparts[1]);
    assert_eq!(text.ctype.mimetype, "text/plain");
    assert_eq!(html.ctype.mimetype, "text/html");
    // MIME bodies travel with CRLF line ends.
    let body = |part: &mailparse::ParsedMail<'_>| part.get_body().unwrap().replace("\r\n", "\n");
    assert_eq!(body(text).trim_end(), email.text.trim_end());
    assert_eq!(body(html).trim_end(), email.html.trim_end());
    // The rendered HTML reached the wire with its CSS inlined.
    assert!(
        html.get_body().unwrap().contains("style=\"color: #c00"),
        "CSS inlined"
    );
    assert!(text.get_body().unwrap().contains("Acme: up to 50% off"));
}
