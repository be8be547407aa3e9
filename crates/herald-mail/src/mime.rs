//! The message as sent, written straight into one buffer: the same RFC 5322
//! text that lettre's `Message` formats, without building one per email.
//!
//! lettre's builder parses back every header it was given (the From to
//! check it, From and To again for the envelope, the Content-Type for the
//! boundary), and its bodies go through three passes and three buffers
//! (choosing the encoding, CRLF line ends, quoted-printable). Here headers
//! still go through lettre's own encoders (RFC 2047 for non-ASCII subjects
//! and display names, folding), the transfer encoding is chosen by the
//! rule lettre applies, and each body is then encoded, CRLF line ends
//! included, in one pass straight into the message.

use std::io::Write as _;

use lettre::message::header::{self, HeaderName, HeaderValue, Headers};
use lettre::message::Mailboxes;
use sha2::{Digest, Sha256};

use crate::message::{MessageError, OutgoingEmail};

/// Longest quoted-printable line before its soft line break: RFC 2045
/// allows 76 characters, the `=` of the soft break included.
const QP_LINE: usize = 75;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes a quoted-printable body carries as they are: printable ASCII but
/// `=`, plus space and tab (except right before a line end, see
/// [`write_quoted_printable`]).
const QP_LITERAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = b' ';
    while byte <= b'~' {
        table[byte as usize] = byte != b'=';
        byte += 1;
    }
    table[b'\t' as usize] = true;
    table
};

/// `email` as RFC 5322 bytes, `multipart/alternative` with the text part
/// then the HTML part: what `email.to_mime()?.formatted()` gives, up to the
/// boundary, the folding of the `Content-Type` header and the encoding of a
/// body with a NUL or a lone CR (see [`BodyEncoding`]).
pub(crate) fn format(email: &OutgoingEmail) -> Result<Vec<u8>, MessageError> {
    email.check()?;
    let text = BodyEncoding::choose(&email.text);
    let html = BodyEncoding::choose(&email.html);
    let boundary = boundary(
        &email.message_id,
        &[(&email.text, text), (&email.html, html)],
    );

    let mut out =
        Vec::with_capacity(2048 + email.text.len() * 11 / 10 + email.html.len() * 11 / 10);
    write_headers(email, &boundary, &mut out)?;
    for (body, encoding, content_type) in [
        (&email.text, text, "text/plain"),
        (&email.html, html, "text/html"),
    ] {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"; charset=utf-8\r\nContent-Transfer-Encoding: ");
        out.extend_from_slice(encoding.name().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        encoding.write(body, &mut out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    Ok(out)
}

/// The message headers in the order lettre's builder leaves them, each
/// encoded by lettre, then the multipart `Content-Type` and the blank line.
fn write_headers(
    email: &OutgoingEmail,
    boundary: &str,
    out: &mut Vec<u8>,
) -> Result<(), MessageError> {
    let mut headers = Headers::with_capacity(10 + email.custom_args.len());
    headers.set(header::From::from(Mailboxes::from(email.from.clone())));
    headers.set(header::To::from(Mailboxes::from(email.to.clone())));
    headers.set(header::Subject::from(email.subject.clone()));
    headers.set(header::MessageId::from(format!("<{}>", email.message_id)));
    if let Some(reply_to) = &email.reply_to {
        headers.set(header::ReplyTo::from(Mailboxes::from(reply_to.clone())));
    }
    for (name, value) in email.extra_headers() {
        let name =
            HeaderName::new_from_ascii(name).map_err(|e| MessageError::Mime(e.to_string()))?;
        headers.insert_raw(HeaderValue::new(name, value));
    }
    headers.set(header::MIME_VERSION_1_0);
    headers.set(header::Date::now());
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{headers}Content-Type: multipart/alternative;\r\n boundary=\"{boundary}\"\r\n\r\n"
    );
    Ok(())
}

/// A `Content-Transfer-Encoding` for a text body, chosen by the rule of
/// `email-encoding`'s `Encoding::choose`, which lettre applies (for a
/// server without SMTPUTF8): `7bit` for ASCII with short lines, else
/// quoted-printable, or base64 when over a third of the bytes would need
/// escaping. Written out here as that function counts the escapes one byte
/// at a time, the slowest step of formatting a message. Unlike lettre, an
/// ASCII body with a NUL or a lone CR is quoted-printable, not `7bit`,
/// which RFC 5322 forbids them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEncoding {
    SevenBit,
    QuotedPrintable,
    Base64,
}

impl BodyEncoding {
    fn choose(body: &str) -> Self {
        let bytes = body.as_bytes();
        if body.is_ascii() && !has_long_line(body) {
            return if bytes.contains(&0) || has_lone_cr(body) {
                Self::QuotedPrintable
            } else {
                Self::SevenBit
            };
        }
        // Counted in blocks small enough for a byte-wide count, which the
        // compiler turns into vector additions.
        let escaped: usize = bytes
            .chunks(128)
            .map(|block| {
                let count = block.iter().fold(0u8, |count, &byte| {
                    count + u8::from(byte != b'\t' && !(b' '..=b'~').contains(&byte))
                });
                usize::from(count)
            })
            .sum();
        if escaped <= bytes.len() / 3 {
            Self::QuotedPrintable
        } else {
            Self::Base64
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::SevenBit => "7bit",
            Self::QuotedPrintable => "quoted-printable",
            Self::Base64 => "base64",
        }
    }

    fn write(self, body: &str, out: &mut Vec<u8>) {
        match self {
            Self::SevenBit => write_crlf(body, out),
            Self::QuotedPrintable => write_quoted_printable(body.as_bytes(), out),
            Self::Base64 => {
                let mut crlf = Vec::with_capacity(body.len() + body.len() / 16);
                write_crlf(body, &mut crlf);
                let mut encoded =
                    String::with_capacity(email_encoding::body::base64::encoded_len(crlf.len()));
                // Writing into a String cannot fail.
                let _ = email_encoding::body::base64::encode(&crlf, &mut encoded);
                out.extend_from_slice(encoded.as_bytes());
            }
        }
    }
}

/// A boundary that none of the bodies can contain: it starts with `=_`,
/// which quoted-printable and base64 never produce, and a `7bit` body is
/// searched for it. Derived from the Message-ID, so a resend is
/// byte-identical but for the date.
fn boundary(message_id: &str, bodies: &[(&str, BodyEncoding)]) -> String {
    let mut seed = Sha256::digest(message_id.as_bytes());
    loop {
        let mut candidate = String::with_capacity(2 + 32);
        candidate.push_str("=_");
        for byte in &seed[..16] {
            candidate.push(char::from(HEX[usize::from(byte >> 4)]));
            candidate.push(char::from(HEX[usize::from(byte & 15)]));
        }
        let clashes = bodies.iter().any(|(body, encoding)| {
            *encoding == BodyEncoding::SevenBit && body.contains(candidate.as_str())
        });
        if !clashes {
            return candidate;
        }
        seed = Sha256::digest(seed);
    }
}

/// Whether `text` has a line too long for `7bit`, measured as
/// `email-encoding` does: 76 bytes or more, counting the line feed before
/// every line but the first.
fn has_long_line(text: &str) -> bool {
    let mut lines = text.split('\n');
    lines.next().is_some_and(|first| first.len() >= 76) || lines.any(|line| line.len() >= 75)
}

/// Whether `text` holds a CR that does not start a CRLF.
fn has_lone_cr(text: &str) -> bool {
    text.contains('\r')
        && text
            .match_indices('\r')
            .any(|(at, _)| text.as_bytes().get(at + 1) != Some(&b'\n'))
}

/// `text` with every line end as CRLF: a `\n` without its `\r` gets one,
/// as lettre does (a lone `\r` is left alone).
fn write_crlf(text: &str, out: &mut Vec<u8>) {
    for line in text.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(content) if !content.ends_with('\r') => {
                out.extend_from_slice(content.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(line.as_bytes()),
        }
    }
}

/// Quoted-printable (RFC 2045, section 6.7) of a text body.
///
/// Line ends (`\n` or `\r\n`) become CRLF hard breaks; every other byte is
/// carried as it is when printable ASCII but `=`, or escaped as `=XX`. A
/// space or tab right before a line end or the end of the body is escaped
/// (it would be taken for padding and dropped), and lines longer than 76
/// characters are cut with a soft break (`=` CRLF). Decoding gives back the
/// body with CRLF line ends, byte for byte what lettre's encoder gives.
fn write_quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    let mut column = 0;
    let mut rest = body;
    while let Some(&byte) = rest.first() {
        let line_end = match byte {
            b'\n' => 1,
            b'\r' if rest.get(1) == Some(&b'\n') => 2,
            _ => 0,
        };
        if line_end > 0 {
            out.extend_from_slice(b"\r\n");
            column = 0;
            rest = &rest[line_end..];
            continue;
        }
        let mut run = literal_run(rest, QP_LINE - column);
        let at_line_end =
            matches!(rest.get(run), None | Some(b'\n')) || rest[run..].starts_with(b"\r\n");
        if run > 0 && at_line_end && matches!(rest[run - 1], b' ' | b'\t') {
            run -= 1;
        }
        let width = if run > 0 { run } else { 3 };
        if column + width > QP_LINE {
            out.extend_from_slice(b"=\r\n");
            column = 0;
            continue;
        }
        if run > 0 {
            out.extend_from_slice(&rest[..run]);
        } else {
            out.extend_from_slice(&[
                b'=',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 15)],
            ]);
            run = 1;
        }
        column += width;
        rest = &rest[run..];
    }
}

/// How many bytes at the start of `bytes`, `most` at most, a
/// quoted-printable body carries as they are.
fn literal_run(bytes: &[u8], most: usize) -> usize {
    let bytes = &bytes[..bytes.len().min(most)];
    // Eight bytes at a time up to the first that is not plain, then byte by
    // byte (a tab is literal too, and rare).
    let mut run = 0;
    while let Some(word) = bytes.get(run..run + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let not_plain = not_plain_bytes(word);
        if not_plain != 0 {
            run += not_plain.trailing_zeros() as usize / 8;
            break;
        }
        run += 8;
    }
    run + bytes[run..]
        .iter()
        .take_while(|&&byte| QP_LITERAL[usize::from(byte)])
        .count()
}

/// The high bit of each byte of `word` that is not printable ASCII
/// (`' '..='~'`) or is `=`, every other bit clear. Each test adds at most
/// `0x7F + 0x80` within a byte, so no carry crosses into the next byte and
/// every byte is judged on its own.
fn not_plain_bytes(word: u64) -> u64 {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = LOW * 0x80;
    let low_bits = word & !HIGH;
    // In each of these, a byte's high bit is set when the byte is...
    // non-ASCII: its own high bit;
    let non_ascii = word;
    // below a space: its low seven bits plus 0x60 stay under 0x80;
    let below_space = !(low_bits + LOW * (0x80 - 0x20));
    // DEL: its low seven bits plus one reach 0x80;
    let delete = low_bits + LOW;
    // `=`: it is a zero byte once XORed with `=`.
    let equals_xor = word ^ (LOW * u64::from(b'='));
    let equals = !(((equals_xor & !HIGH) + !HIGH) | equals_xor);
    (non_ascii | below_space | delete | equals) & HIGH
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lettre::message::Mailbox;
    use mailparse::{MailHeaderMap, ParsedMail};
    use rand::rngs::StdRng;
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::message::tests::email;

    /// What a reader gets back from a body lettre encoded: line ends as
    /// CRLF, a lone CR kept.
    fn crlf(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() * 2);
        for (at, &byte) in body.iter().enumerate() {
            if byte == b'\n' && (at == 0 || body[at - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(byte);
        }
        out
    }

    /// Every header but `Date` and `Content-Type`, decoded, in order.
    fn headers_without_date(parsed: &ParsedMail<'_>) -> Vec<(String, String)> {
        parsed
            .headers
            .iter()
            .map(|h| (h.get_key(), h.get_value()))
            .filter(|(key, _)| key != "Date" && key != "Content-Type")
            .collect()
    }

    fn transfer_encoding(part: &ParsedMail<'_>) -> String {
        part.headers
            .get_first_value("Content-Transfer-Encoding")
            .expect("the part has a Content-Transfer-Encoding")
    }

    /// Lines of `raw`, which must all end in CRLF.
    fn lines(raw: &[u8]) -> Vec<&[u8]> {
        let lines: Vec<&[u8]> = raw
            .strip_suffix(b"\r\n")
            .expect("the message ends with CRLF")
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .collect();
        let crlf_count = raw.windows(2).filter(|w| w == b"\r\n").count();
        assert_eq!(crlf_count, lines.len(), "a bare LF in the message");
        lines
    }

    /// Formats `email` both ways and checks that a reader sees the same
    /// message: same headers, same parts, byte-identical decoded bodies,
    /// and lines within RFC 5322 and RFC 2045 limits. Returns the parts'
    /// transfer encodings.
    fn assert_same_as_lettre(email: &OutgoingEmail) -> Vec<String> {
        let ours = email.formatted().unwrap();
        let lettre = email.to_mime().unwrap().formatted();
        let context = String::from_utf8_lossy(&ours).into_owned();
        let (ours_parsed, lettre_parsed) = (
            mailparse::parse_mail(&ours).unwrap(),
            mailparse::parse_mail(&lettre).unwrap(),
        );
        assert_eq!(
            headers_without_date(&ours_parsed),
            headers_without_date(&lettre_parsed),
            "{context}"
        );
        let date = |parsed: &ParsedMail<'_>| {
            mailparse::dateparse(&parsed.headers.get_first_value("Date").unwrap()).unwrap()
        };
        assert!((date(&ours_parsed) - date(&lettre_parsed)).abs() <= 5);
        assert_eq!(ours_parsed.ctype.mimetype, "multipart/alternative");
        assert_eq!(ours_parsed.subparts.len(), 2, "{context}");
        for (ours, theirs, body) in [
            (
                &ours_parsed.subparts[0],
                &lettre_parsed.subparts[0],
                &email.text,
            ),
            (
                &ours_parsed.subparts[1],
                &lettre_parsed.subparts[1],
                &email.html,
            ),
        ] {
            assert_eq!(ours.ctype.mimetype, theirs.ctype.mimetype);
            assert_eq!(ours.ctype.charset, "utf-8");
            assert_eq!(
                ours.get_body_raw().unwrap(),
                theirs.get_body_raw().unwrap(),
                "{context}"
            );
            assert_eq!(ours.get_body_raw().unwrap(), crlf(body.as_bytes()));
            let expected_encoding = match transfer_encoding(theirs).as_str() {
                "7bit" if body.contains('\0') || has_lone_cr(body) => "quoted-printable".to_owned(),
                other => other.to_owned(),
            };
            assert_eq!(transfer_encoding(ours), expected_encoding, "{context}");
        }

        let boundary = ours_parsed.ctype.params["boundary"].as_bytes().to_vec();
        let encodings = ours_parsed.subparts.iter().map(transfer_encoding).collect();
        let mut in_quoted_printable = false;
        for line in lines(&ours) {
            assert!(line.len() <= 998, "{context}");
            if line.starts_with(b"Content-Transfer-Encoding: ") {
                in_quoted_printable = line.ends_with(b"quoted-printable");
            } else if line.starts_with(b"--") && line[2..].starts_with(&boundary) {
                in_quoted_printable = false;
            } else if in_quoted_printable {
                assert!(line.len() <= 76, "{line:?} in\n{context}");
                assert!(line
                    .iter()
                    .all(|&b| b == b'=' || QP_LITERAL[usize::from(b)]));
                assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"));
            }
        }
        encodings
    }

    #[test]
    fn formatted_messages_read_as_lettre_messages_do() {
        let bodies: [&str; 14] = [
            "Hello Ada",
            "",
            "Prix réduits — 50 %, 日本語のテキスト, emoji 😀 too",
            &"A long line of words without any break at all. ".repeat(12),
            ".\n.. dots\n.\r\nend",
            "From here on\nFrom the top\n>From quoted",
            "a=b ==3D =\n=\r\n=",
            "trailing space \ntrailing tab\t\r\nend space ",
            "mixed\r\nline\nends\r\n\n\r\n\n",
            "lone\rcarriage return and a \0 NUL",
            "\n\nstarts with line feeds",
            &format!("{}\nafter a 998-byte line", "x".repeat(998)),
            "Съешь же ещё этих мягких французских булок, да выпей чаю",
            "--=_not-a-boundary\r\n--\r\n",
        ];
        let mut cases = Vec::new();
        for (at, body) in bodies.iter().enumerate() {
            let mut e = email("Ada Lovelace <ada@example.com>");
            e.text = (*body).to_owned();
            e.html = format!("<p>{}</p>", bodies[(at + 3) % bodies.len()]);
            cases.push(e);
        }
        let mut plain = email("ada@example.com");
        plain.subject = "Plain ASCII subject".to_owned();
        plain.reply_to = None;
        plain.list_unsubscribe = None;
        plain.custom_args.clear();
        cases.push(plain);
        let mut names = email("\"Lovelace, Ada\" <ada@example.com>");
        names.from = Mailbox::new(
            Some("Boutique Éloïse — Soldes".to_owned()),
            "alerts@shop.example.com".parse().unwrap(),
        );
        names.subject = format!("Grandes soldes chez Éloïse: {}", "très ".repeat(20));
        cases.push(names);
        for e in &cases {
            assert_same_as_lettre(e);
        }
    }

    #[test]
    fn random_messages_read_as_lettre_messages_do() {
        const PIECES: [&str; 24] = [
            "a",
            "Hello ",
            "word",
            "=",
            "=3D",
            " ",
            "\t",
            "\n",
            "\r\n",
            "\r",
            ".",
            "..\n",
            "From ",
            "é",
            "日本",
            "😀",
            "--",
            "=_",
            " \n",
            "\t\r\n",
            "\x01",
            "\x7f",
            "\0",
            "0123456789012345678901234567890123456789",
        ];
        const SUBJECT_PIECES: [&str; 9] = [
            "Sale",
            " ",
            "é",
            "日本",
            "😀",
            "=?utf-8?q?x?=",
            "\"quoted\"",
            "50% off",
            "a,b;",
        ];
        let mut rng = StdRng::seed_from_u64(5322);
        let text = |rng: &mut StdRng, pieces: &[&str], most: usize| -> String {
            let count = rng.random_range(0..most);
            (0..count).map(|_| *pieces.choose(rng).unwrap()).collect()
        };
        let mut encodings = BTreeSet::new();
        for _ in 0..300 {
            let mut e = email("ada@example.com");
            e.text = text(&mut rng, &PIECES, 200);
            e.html = text(&mut rng, &PIECES, 400);
            e.subject = format!("S{}", text(&mut rng, &SUBJECT_PIECES, 30));
            e.to = Mailbox::new(
                Some(text(&mut rng, &SUBJECT_PIECES, 8)),
                "ada@example.com".parse().unwrap(),
            );
            encodings.extend(assert_same_as_lettre(&e));
        }
        assert_eq!(
            encodings,
            BTreeSet::from(["7bit", "base64", "quoted-printable"].map(String::from)),
            "the random bodies cover every transfer encoding"
        );
    }

    #[test]
    fn the_encoding_is_chosen_as_email_encoding_chooses_it() {
        use email_encoding::body::Encoding;
        const PIECES: [&str; 9] = [
            "a",
            " ",
            "\t",
            "\n",
            "\r\n",
            "é",
            "😀",
            "\x01",
            "日本語のテキストです。日本語のテキストです。",
        ];
        let mut rng = StdRng::seed_from_u64(76);
        let mut chosen = BTreeSet::new();
        for _ in 0..3_000 {
            let mut body = String::new();
            for _ in 0..rng.random_range(0..6) {
                let plain = rng.random_range(70..80) * usize::from(rng.random_bool(0.7));
                body.push_str(&"x".repeat(plain));
                for _ in 0..rng.random_range(0..4) {
                    body.push_str(PIECES.choose(&mut rng).unwrap());
                }
            }
            let expected = match Encoding::choose(body.as_str(), false) {
                Encoding::SevenBit => BodyEncoding::SevenBit,
                Encoding::QuotedPrintable => BodyEncoding::QuotedPrintable,
                Encoding::Base64 => BodyEncoding::Base64,
                Encoding::EightBit => unreachable!("not chosen without SMTPUTF8"),
            };
            assert_eq!(BodyEncoding::choose(&body), expected, "{body:?}");
            chosen.insert(expected.name());
        }
        assert_eq!(chosen.len(), 3, "{chosen:?}");
    }

    #[test]
    fn quoted_printable_round_trips_random_bytes() {
        let mut rng = StdRng::seed_from_u64(2045);
        let alphabet: Vec<u8> = b"ab .=\t\r\n\x00\xff\xc3\xa9~"
            .iter()
            .copied()
            .chain(0..=255)
            .collect();
        for _ in 0..2_000 {
            let length = rng.random_range(0..300);
            let body: Vec<u8> = (0..length)
                .map(|_| *alphabet.choose(&mut rng).unwrap())
                .collect();
            let mut encoded = Vec::new();
            write_quoted_printable(&body, &mut encoded);
            for line in encoded.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(line.len() <= 76, "{line:?}");
                assert!(line
                    .iter()
                    .all(|&b| b == b'=' || QP_LITERAL[usize::from(b)]));
                assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"));
            }
            let mut message =
                b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                    .to_vec();
            message.extend_from_slice(&encoded);
            let decoded = mailparse::parse_mail(&message)
                .unwrap()
                .get_body_raw()
                .unwrap();
            assert_eq!(
                decoded,
                crlf(&body),
                "{:?}",
                String::from_utf8_lossy(&encoded)
            );
        }
    }

    #[test]
    fn not_plain_bytes_marks_exactly_the_bytes_to_look_at() {
        let mut rng = StdRng::seed_from_u64(8);
        for byte in 0..=255u8 {
            for position in 0..8 {
                let mut bytes: [u8; 8] = rng.random();
                bytes[position] = byte;
                let expected = bytes.iter().enumerate().fold(0, |mask, (at, &b)| {
                    let plain = (b' '..=b'~').contains(&b) && b != b'=';
                    mask | (u64::from(!plain) << (at * 8 + 7))
                });
                let word = u64::from_le_bytes(bytes);
                assert_eq!(not_plain_bytes(word), expected, "{bytes:?}");
            }
        }
    }

    #[test]
    fn quoted_printable_escapes_and_wraps_as_rfc_2045_says() {
        let encode = |body: &str| {
            let mut out = Vec::new();
            write_quoted_printable(body.as_bytes(), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(encode("a=b é"), "a=3Db =C3=A9");
        assert_eq!(encode("end \nx\t\r\ny "), "end=20\r\nx=09\r\ny=20");
        assert_eq!(encode("a\rb"), "a=0Db");
        let long = encode(&"x".repeat(160));
        assert_eq!(
            long,
            format!(
                "{}=\r\n{}=\r\n{}",
                "x".repeat(75),
                "x".repeat(75),
                "x".repeat(10)
            )
        );
    }

    #[test]
    fn the_boundary_avoids_a_seven_bit_body_that_holds_it() {
        let mut e = email("ada@example.com");
        e.text = "plain ascii".to_owned();
        let first = boundary(&e.message_id, &[(&e.text, BodyEncoding::SevenBit)]);
        assert!(first.starts_with("=_"));
        e.text = format!("before\r\n--{first}\r\nafter");
        let raw = e.formatted().unwrap();
        let parsed = mailparse::parse_mail(&raw).unwrap();
        assert_ne!(parsed.ctype.params["boundary"], first);
        assert_eq!(parsed.subparts.len(), 2);
        assert_eq!(transfer_encoding(&parsed.subparts[0]), "7bit");
        assert_eq!(
            parsed.subparts[0].get_body_raw().unwrap(),
            e.text.as_bytes()
        );
    }

    #[test]
    fn the_envelope_goes_from_the_sender_to_the_member() {
        let e = email("Ada <ada@example.com>");
        let envelope = e.envelope().unwrap();
        assert_eq!(envelope, *e.to_mime().unwrap().envelope());
        assert_eq!(
            envelope.from().map(ToString::to_string).as_deref(),
            Some("alerts@shop.example.com")
        );
    }
}
