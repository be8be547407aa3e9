//! Submitted forms: `application/x-www-form-urlencoded` pairs, read in
//! order, so a field may repeat (checkboxes) and unknown fields are ignored.

use bytes::Bytes;

/// The field every form carries its CSRF token in.
pub const CSRF_FIELD: &str = "_csrf";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn from_bytes(body: &Bytes) -> Self {
        Self::parse(body)
    }

    /// The first value of `name`, or `""`.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub fn optional(&self, name: &str) -> Option<String> {
        Some(self.get(name).trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// Every value of `name`, in order, blanks left out.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_keep_their_order_and_blanks_are_dropped() {
        let form = FormData::parse(b"sale=b&name=Spring+sale&sale=a&sale=&_csrf=t%2Bk");
        assert_eq!(form.all("sale"), vec!["b", "a"]);
        assert_eq!(form.get("name"), "Spring sale");
        assert_eq!(form.get(CSRF_FIELD), "t+k");
        assert_eq!(form.get("missing"), "");
        assert_eq!(form.optional("missing"), None);
    }

    #[test]
    fn malformed_bodies_parse_to_what_can_be_read() {
        let form = FormData::parse(b"%ZZ=1&&=&a=%E2%28");
        assert_eq!(form.all("a").len(), 1);
        assert_eq!(FormData::parse(b"").get("x"), "");
    }
}
