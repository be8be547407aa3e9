//! Reading database URLs: which backend one names, and how to show one in an
//! error without leaking its password.

use crate::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    Sqlite,
    Postgres,
}

/// `sqlite:`/`sqlite://` URLs and plain paths are SQLite; `postgres://` and
/// `postgresql://` are PostgreSQL; any other scheme is refused rather than
/// taken for a file name.
pub(crate) fn backend_of(url: &str) -> Result<BackendKind, StoreError> {
    match scheme(url) {
        None | Some("sqlite") => Ok(BackendKind::Sqlite),
        Some("postgres" | "postgresql") => Ok(BackendKind::Postgres),
        Some(other) => Err(StoreError::InvalidUrl {
            url: mask_password(url),
            message: format!(
                "unknown scheme {other:?}; use sqlite:<path>, a plain path, or postgres://"
            ),
        }),
    }
}

/// The URL scheme, if the text starts with one. A single letter before the
/// colon is a Windows drive, not a scheme.
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (starts_with_letter && rest_ok && scheme.len() > 1).then_some(scheme)
}

/// The URL with the password of its user-info part (`user:password@`) and of
/// any `password=` query parameter replaced by `***`.
pub fn mask_password(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => head.to_owned(),
                },
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_follow_the_scheme() {
        for url in [
            "sqlite://data/h.db",
            "sqlite:h.db",
            "h.db",
            "./a:b.db",
            "C:\\herald\\h.db",
        ] {
            assert_eq!(backend_of(url).unwrap(), BackendKind::Sqlite, "{url}");
        }
        for url in [
            "postgres://u@h/db",
            "postgresql://u:p@h:5433/db?sslmode=disable",
        ] {
            assert_eq!(backend_of(url).unwrap(), BackendKind::Postgres, "{url}");
        }
        let err = backend_of("mysql://root:hunter2@db/herald").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mysql://root:***@db/herald"), "{text}");
        assert!(text.contains("\"mysql\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn passwords_are_masked_wherever_they_sit() {
        let cases = [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgres://u:p%40ss@h/db?sslmode=require",
                "postgres://u:***@h/db?sslmode=require",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?user=u&password=secret",
                "postgres://h/db?user=u&password=***",
            ),
            ("postgres://u:a@b@h/db", "postgres://u:***@h/db"),
            ("sqlite://data/h.db", "sqlite://data/h.db"),
        ];
        for (url, masked) in cases {
            assert_eq!(mask_password(url), masked, "{url}");
        }
    }
}
