#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {url:?} is not valid: {message}")]
    InvalidUrl { url: String, message: String },
    #[error("{backend} store: migration failed: {message}")]
    Migration {
        backend: &'static str,
        message: String,
    },
    #[error("{backend} store: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error("{backend} store: stored {what} cannot be read back: {message}")]
    Corrupt {
        backend: &'static str,
        what: &'static str,
        message: String,
    },
    #[error("{field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    /// `what` is the whole message: "brand x already exists", "cannot
    /// schedule a brand alert that is sending", ...
    #[error("{what}")]
    Conflict { what: String },
    /// Refused because other data refers to it (a brand with sales, a
    /// template an alert uses).
    #[error("{what} is still used by {used_by}")]
    InUse { what: String, used_by: String },
}

impl StoreError {
    pub(crate) fn sqlite(e: sqlx::Error, context: &str) -> Self {
        Self::from_sqlx(crate::sqlite::BACKEND, e, context)
    }

    pub(crate) fn postgres(e: sqlx::Error, context: &str) -> Self {
        Self::from_sqlx(crate::postgres::BACKEND, e, context)
    }

    pub(crate) fn from_sqlx(backend: &'static str, e: sqlx::Error, context: &str) -> Self {
        StoreError::Backend {
            backend,
            message: format!("{context}: {e}"),
        }
    }

    /// The backend this error came from, when it came from one.
    pub fn backend(&self) -> Option<&'static str> {
        match self {
            StoreError::Migration { backend, .. }
            | StoreError::Backend { backend, .. }
            | StoreError::Corrupt { backend, .. } => Some(backend),
            _ => None,
        }
    }
}

/// Whether a failed statement broke a foreign key (a row still referenced,
/// or a reference to a row that does not exist).
pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_foreign_key_violation())
}

/// Whether a failed statement broke a unique constraint.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}
