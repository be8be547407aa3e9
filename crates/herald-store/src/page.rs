//! Keyset pagination shared by every list: a page holds at most `limit`
//! items and, when more follow, the opaque cursor that fetches them.

/// The most items one page may hold, whatever the caller asks for.
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// The `next_cursor` of the previous page; `None` for the first page.
    pub after: Option<String>,
    /// Clamped to `1..=MAX_PAGE_SIZE`; 0 means the default.
    pub limit: u32,
}

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        Self { after: None, limit }
    }

    /// The limit actually applied.
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items follow.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in key order: the
    /// extra row only tells that another page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(&cursor_of)
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_clamps() {
        assert_eq!(PageRequest::first(0).effective_limit(), DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::first(5).effective_limit(), 5);
        assert_eq!(PageRequest::first(50_000).effective_limit(), MAX_PAGE_SIZE);
    }

    #[test]
    fn extra_row_becomes_the_cursor_of_the_last_kept_item() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("2"));
        let last = Page::from_rows(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(last.next_cursor, None);
    }
}
