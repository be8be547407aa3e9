//! Values of the catalog (brands, sales) and of the audience (members,
//! affinities, subscriptions, suppressions), each parsed once at the edge
//! (API request, import line) into a type that can only hold a valid value.
//!
//! Every type deserializes through its `parse`, so a JSON body or an import
//! line with a bad value fails with the same message as a direct call.
//!
//! Choices worth knowing:
//! - Brand and member ids are the caller's own keys (catalog and CRM ids):
//!   `[A-Za-z0-9._:@-]{1,128}`, enough for UUIDs, numeric ids, `crm:123` or
//!   an address-shaped key, and safe in URLs, CSV cells and log lines.
//! - Email addresses are checked by the `email_address` crate (RFC 5321/5322
//!   syntax) with a dot required in the domain, no domain literals and no
//!   display names: a marketing address needs a real, routable domain.
//! - Time zones are checked against the IANA database compiled into
//!   `chrono-tz`, with no file access: a typo such as `Europe/Londn` is caught
//!   at import time rather than when the mailer formats a date. Names are
//!   case-sensitive, as in the database.
//! - Affinity scores are finite numbers in `0.0..=1.0`, the range alert
//!   thresholds are written in.

use std::fmt;
use std::str::FromStr;

use email_address::Options;

/// The longest brand or member id.
pub const MAX_ID_LEN: usize = 128;
/// The longest email address (RFC 5321's path limit less the brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// The longest locale tag.
pub const MAX_LOCALE_LEN: usize = 35;
/// The longest email type name.
pub const MAX_EMAIL_TYPE_LEN: usize = 64;
/// The longest sale or image URL.
pub const MAX_URL_LEN: usize = 2048;
/// The email type Herald sends brand alerts as.
pub const BRAND_ALERTS: &str = "brand_alerts";

/// Why a value was refused; the message names the value's kind, not the
/// field it came in, which the caller knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

/// Implements `as_str`, `Display`, `FromStr`, `AsRef<str>`, `Serialize` and
/// a validating `Deserialize` for a newtype over `String` with a `parse`.
macro_rules! string_value {
    ($ty:ident) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn check_id(kind: &str, id: &str) -> Result<(), InvalidValue> {
    if id.is_empty() {
        return Err(InvalidValue::new(format!("{kind} id is empty")));
    }
    if let Some(found) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
    {
        return Err(InvalidValue::new(format!(
            "{kind} id {id:?} contains {found:?}; only letters, digits and . _ : @ - are allowed"
        )));
    }
    if id.len() > MAX_ID_LEN {
        return Err(InvalidValue::new(format!(
            "{kind} id is {} characters long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    Ok(())
}

macro_rules! external_id {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(id: &str) -> Result<Self, InvalidValue> {
                check_id($kind, id)?;
                Ok(Self(id.to_owned()))
            }
        }

        string_value!($ty);
    };
}

external_id!(
    /// A brand's id, chosen by the catalog that owns the brand.
    BrandId,
    "brand"
);
external_id!(
    /// A member's id, chosen by the CRM that owns the member.
    MemberId,
    "member"
);
external_id!(
    /// The key provider events for a member are routed by (a customer id of
    /// the shard that owns the member).
    CustomerId,
    "customer"
);

/// A syntactically valid email address, as given (trimmed), with the
/// normalized form (lower-cased) that suppressions match on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(address: &str) -> Result<Self, InvalidValue> {
        let address = address.trim();
        if address.is_empty() {
            return Err(InvalidValue::new("email address is empty"));
        }
        if address.len() > MAX_EMAIL_LEN {
            return Err(InvalidValue::new(format!(
                "email address is {} bytes long; the limit is {MAX_EMAIL_LEN}",
                address.len()
            )));
        }
        let options = Options::default()
            .with_required_tld()
            .without_domain_literal()
            .without_display_text();
        email_address::EmailAddress::parse_with_options(address, options).map_err(|e| {
            InvalidValue::new(format!(
                "{address:?} is not an email address: {}",
                e.to_string().trim_end_matches('.').to_lowercase()
            ))
        })?;
        Ok(Self(address.to_owned()))
    }

    /// The form suppressions and look-ups by address use.
    pub fn normalized(&self) -> String {
        normalize_email(&self.0)
    }
}

string_value!(EmailAddress);

/// Trimmed and lower-cased: the key an address is suppressed and looked up
/// by, so `Ann@Example.com ` and `ann@example.com` are one address.
pub fn normalize_email(address: &str) -> String {
    address.trim().to_lowercase()
}

/// A BCP 47 language tag, checked for shape only (a 2-3 or 5-8 letter
/// language, then subtags of 1-8 letters or digits, joined by `-`): enough
/// to catch `en_GB` and free text without a registry of subtags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locale(String);

impl Locale {
    pub fn parse(tag: &str) -> Result<Self, InvalidValue> {
        let bad = |why: &str| {
            InvalidValue::new(format!(
                "locale {tag:?} is not a language tag such as en or en-GB: {why}"
            ))
        };
        if tag.is_empty() {
            return Err(bad("it is empty"));
        }
        if tag.len() > MAX_LOCALE_LEN {
            return Err(bad(&format!(
                "it is longer than {MAX_LOCALE_LEN} characters"
            )));
        }
        let mut subtags = tag.split('-');
        let language = subtags.next().unwrap_or_default();
        let language_ok = matches!(language.len(), 2 | 3 | 5..=8)
            && language.chars().all(|c| c.is_ascii_alphabetic());
        if !language_ok {
            return Err(bad("it must start with a language of 2-3 letters"));
        }
        if subtags
            .any(|s| s.is_empty() || s.len() > 8 || !s.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(bad("subtags are 1-8 letters or digits, separated by '-'"));
        }
        Ok(Self(tag.to_owned()))
    }
}

string_value!(Locale);

/// An IANA time zone name known to the compiled-in database, e.g.
/// `Europe/London` or `UTC`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TimeZone(String);

impl TimeZone {
    pub fn parse(name: &str) -> Result<Self, InvalidValue> {
        let zone = chrono_tz::Tz::from_str(name).map_err(|_| {
            InvalidValue::new(format!(
                "time zone {name:?} is not an IANA time zone name such as Europe/London"
            ))
        })?;
        Ok(Self(zone.name().to_owned()))
    }
}

string_value!(TimeZone);

/// A member's affinity for a brand: a finite number in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct AffinityScore(f64);

impl AffinityScore {
    pub const MIN: f64 = 0.0;
    pub const MAX: f64 = 1.0;

    pub fn new(score: f64) -> Result<Self, InvalidValue> {
        if !score.is_finite() || !(Self::MIN..=Self::MAX).contains(&score) {
            return Err(InvalidValue::new(format!(
                "affinity score {score} is not a number from {} to {}",
                Self::MIN,
                Self::MAX
            )));
        }
        Ok(Self(score))
    }

    /// Parses a decimal number such as `0.75`.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let score = text.trim().parse::<f64>().map_err(|_| {
            InvalidValue::new(format!(
                "affinity score {text:?} is not a number from {} to {}",
                Self::MIN,
                Self::MAX
            ))
        })?;
        Self::new(score)
    }

    pub fn value(self) -> f64 {
        self.0
    }
}

impl serde::Serialize for AffinityScore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for AffinityScore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A kind of email a member can be subscribed to or not:
/// `[a-z0-9_]{1,64}`. Herald sends [`BRAND_ALERTS`]; other types can be
/// recorded for the CRM's sake.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailType(String);

impl EmailType {
    pub fn parse(name: &str) -> Result<Self, InvalidValue> {
        let ok = !name.is_empty()
            && name.len() <= MAX_EMAIL_TYPE_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(InvalidValue::new(format!(
                "email type {name:?} must be 1-{MAX_EMAIL_TYPE_LEN} lowercase letters, digits or '_', such as {BRAND_ALERTS}"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// The type brand alerts are sent as.
    pub fn brand_alerts() -> Self {
        Self(BRAND_ALERTS.to_owned())
    }
}

string_value!(EmailType);

/// An `http` or `https` URL with a host, as sale links and images are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        if text.len() > MAX_URL_LEN {
            return Err(InvalidValue::new(format!(
                "URL is {} bytes long; the limit is {MAX_URL_LEN}",
                text.len()
            )));
        }
        let url = url::Url::parse(text)
            .map_err(|e| InvalidValue::new(format!("{text:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(InvalidValue::new(format!(
                "{text:?} is not an http or https URL with a host"
            )));
        }
        Ok(Self(url.into()))
    }
}

string_value!(HttpUrl);

/// Declares a closed set of names with `as_str`, `parse`, `ALL` and serde.
macro_rules! name_enum {
    ($(#[$doc:meta])* $ty:ident, $kind:literal { $($(#[$vdoc:meta])* $variant:ident => $name:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $ty {
            $($(#[$vdoc])* $variant),+
        }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            pub fn parse(name: &str) -> Result<Self, InvalidValue> {
                match name {
                    $($name => Ok($ty::$variant),)+
                    other => Err(InvalidValue::new(format!(
                        concat!($kind, " {:?} is unknown; use one of: {}"),
                        other,
                        [$($name),+].join(", ")
                    ))),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_enum!(
    /// Only active members are in an alert's audience.
    #[derive(Default)]
    MemberStatus, "member status" {
        #[default]
        Active => "active",
        Inactive => "inactive",
    }
);

name_enum!(
    /// Why an address gets no more email.
    SuppressionReason, "suppression reason" {
        /// The receiving server said the mailbox does not exist.
        HardBounce => "hard_bounce",
        /// The recipient marked a message as spam.
        SpamReport => "spam_report",
        /// The recipient unsubscribed from every email (a provider-level
        /// unsubscribe; a brand-alert opt-out is a subscription instead).
        Unsubscribe => "unsubscribe",
        /// The address was refused as invalid when sending.
        InvalidAddress => "invalid_address",
        /// Sending failed permanently for another reason (a 5xx from SMTP, a
        /// provider rejection).
        PermanentFailure => "permanent_failure",
        /// An operator suppressed it.
        Manual => "manual",
    }
);

/// Free text naming who or what made a change (`api`, `import`, `sendgrid`,
/// `unsubscribe_link`): 1-100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source(String);

/// The longest source label.
pub const MAX_SOURCE_LEN: usize = 100;

impl Source {
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        check_text("source", text, MAX_SOURCE_LEN)?;
        Ok(Self(text.to_owned()))
    }
}

string_value!(Source);

/// Checks a free-text field (a name, a headline): not blank, at most
/// `max_chars` characters, no control characters other than tab.
pub fn check_text(what: &str, text: &str, max_chars: usize) -> Result<(), InvalidValue> {
    if text.trim().is_empty() {
        return Err(InvalidValue::new(format!("{what} is empty")));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(InvalidValue::new(format!(
            "{what} is {chars} characters long; the limit is {max_chars}"
        )));
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(InvalidValue::new(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_crm_shaped_keys_and_refuse_the_rest() {
        for ok in ["42", "crm:123", "b.nike-2", "ann@example.com", "A_b"] {
            assert_eq!(MemberId::parse(ok).unwrap().as_str(), ok);
        }
        assert!(BrandId::parse(&"x".repeat(MAX_ID_LEN)).is_ok());
        let long = BrandId::parse(&"x".repeat(MAX_ID_LEN + 1)).unwrap_err();
        assert!(long.message().contains("limit is 128"), "{long}");
        assert_eq!(
            MemberId::parse("").unwrap_err().message(),
            "member id is empty"
        );
        for bad in ["a b", "a/b", "é", "a,b", "a\"b", "a\nb"] {
            let err = BrandId::parse(bad).unwrap_err();
            assert!(err.message().starts_with("brand id"), "{bad}: {err}");
        }
    }

    #[test]
    fn email_addresses_are_trimmed_and_normalized() {
        let a = EmailAddress::parse("  Ann.Lee+news@Example.COM ").unwrap();
        assert_eq!(a.as_str(), "Ann.Lee+news@Example.COM");
        assert_eq!(a.normalized(), "ann.lee+news@example.com");
        assert_eq!(normalize_email(" X@Y.io"), "x@y.io");
    }

    #[test]
    fn email_addresses_without_a_routable_domain_are_refused() {
        for bad in [
            "",
            "plain",
            "a@",
            "@example.com",
            "a@localhost",
            "a@[127.0.0.1]",
            "Ann <ann@example.com>",
            "a b@example.com",
            "a@example..com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(EmailAddress::parse(&long)
            .unwrap_err()
            .message()
            .contains("limit is 254"));
        let err = EmailAddress::parse("nope").unwrap_err();
        assert!(
            err.message()
                .starts_with("\"nope\" is not an email address"),
            "{err}"
        );
    }

    #[test]
    fn locales_are_checked_for_shape() {
        for ok in ["en", "en-GB", "pt-BR", "zh-Hant-TW", "es-419", "gsw"] {
            assert_eq!(Locale::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "e",
            "en_GB",
            "english-",
            "en--GB",
            "12",
            "en-toolongsubtag",
            "fr-ça",
        ] {
            assert!(Locale::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn time_zones_must_be_known_iana_names() {
        for ok in [
            "Europe/London",
            "America/Argentina/Buenos_Aires",
            "UTC",
            "Asia/Kolkata",
        ] {
            assert_eq!(TimeZone::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "Europe/Londn",
            "europe/london",
            "GMT+25",
            "Mars/Olympus",
        ] {
            let err = TimeZone::parse(bad).unwrap_err();
            assert!(err.message().contains("IANA"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn affinity_scores_are_finite_and_between_zero_and_one() {
        assert_eq!(AffinityScore::new(0.0).unwrap().value(), 0.0);
        assert_eq!(AffinityScore::new(1.0).unwrap().value(), 1.0);
        assert_eq!(AffinityScore::parse(" 0.25 ").unwrap().value(), 0.25);
        for bad in [-0.01, 1.0001, f64::NAN, f64::INFINITY] {
            assert!(AffinityScore::new(bad).is_err(), "{bad}");
        }
        for bad in ["", "high", "1,5", "2"] {
            assert!(AffinityScore::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<AffinityScore>("1.5").is_err());
        assert_eq!(
            serde_json::from_str::<AffinityScore>("0.5")
                .unwrap()
                .value(),
            0.5
        );
    }

    #[test]
    fn email_types_are_snake_case_names() {
        assert_eq!(EmailType::brand_alerts().as_str(), BRAND_ALERTS);
        assert!(EmailType::parse("weekly_digest2").is_ok());
        assert!(EmailType::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "Brand_Alerts", "brand-alerts", "a b", &"a".repeat(65)] {
            assert!(EmailType::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert_eq!(
            HttpUrl::parse("https://shop.example/sale?id=1")
                .unwrap()
                .as_str(),
            "https://shop.example/sale?id=1"
        );
        assert!(HttpUrl::parse("http://example.com").is_ok());
        for bad in [
            "",
            "shop.example/sale",
            "ftp://example.com/x",
            "javascript:alert(1)",
            "mailto:a@example.com",
            "https://",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(HttpUrl::parse(&long).is_err());
    }

    #[test]
    fn closed_sets_parse_their_names_and_list_them_on_error() {
        assert_eq!(MemberStatus::parse("inactive"), Ok(MemberStatus::Inactive));
        assert_eq!(MemberStatus::default(), MemberStatus::Active);
        for reason in SuppressionReason::ALL {
            assert_eq!(SuppressionReason::parse(reason.as_str()), Ok(*reason));
        }
        let err = SuppressionReason::parse("bounced").unwrap_err();
        assert!(err.message().contains("hard_bounce, spam_report"), "{err}");
        let err = MemberStatus::parse("Active").unwrap_err();
        assert_eq!(
            err.message(),
            "member status \"Active\" is unknown; use one of: active, inactive"
        );
    }

    #[test]
    fn free_text_must_not_be_blank_long_or_contain_controls() {
        assert!(Source::parse("import").is_ok());
        assert!(Source::parse("  ").is_err());
        assert!(Source::parse(&"s".repeat(MAX_SOURCE_LEN + 1)).is_err());
        assert!(check_text("name", "Nike\tAir", 10).is_ok());
        assert!(check_text("name", "a\u{0}b", 10).is_err());
        assert!(
            check_text("name", "ééé", 3).is_ok(),
            "limits count characters"
        );
    }

    #[test]
    fn deserializing_validates() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Row {
            id: MemberId,
            email: EmailAddress,
            status: MemberStatus,
        }
        let ok: Row =
            serde_json::from_str(r#"{"id":"m1","email":"a@example.com","status":"active"}"#)
                .unwrap();
        assert_eq!(ok.email.normalized(), "a@example.com");
        let err = serde_json::from_str::<Row>(
            r#"{"id":"m 1","email":"a@example.com","status":"active"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("member id \"m 1\""), "{err}");
        assert_eq!(
            serde_json::to_string(&MemberStatus::Inactive).unwrap(),
            "\"inactive\""
        );
    }
}
