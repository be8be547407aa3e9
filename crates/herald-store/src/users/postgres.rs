use async_trait::async_trait;
use herald_core::Timestamp;
use sqlx::PgPool;

use super::{SessionRecord, SessionRow, UserRecord, UserRow, UserSql, USER_COLUMNS};
use crate::error::is_unique_violation;
use crate::StoreError;

pub(crate) struct PgUserSql(pub PgPool);

fn err(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::postgres(e, context)
}

#[async_trait]
impl UserSql for PgUserSql {
    const BACKEND: &'static str = crate::postgres::BACKEND;

    async fn insert_user(&self, user: &UserRecord) -> Result<Option<UserRow>, StoreError> {
        let inserted = sqlx::query_as(&format!(
            "INSERT INTO users (id, email, email_normalized, role, password_hash, time_zone, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.email_normalized)
        .bind(user.role)
        .bind(&user.password_hash)
        .bind(&user.time_zone)
        .bind(user.now.millis())
        .fetch_one(&self.0)
        .await;
        match inserted {
            Ok(row) => Ok(Some(row)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(StoreError::postgres(e, "create user")),
        }
    }

    async fn update_password(
        &self,
        email_normalized: &str,
        password_hash: &str,
        now: Timestamp,
    ) -> Result<Option<UserRow>, StoreError> {
        let mut tx = self.0.begin().await.map_err(err("change password"))?;
        let row: Option<UserRow> = sqlx::query_as(&format!(
            "UPDATE users SET password_hash = $2, updated_at = $3 WHERE email_normalized = $1 \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(email_normalized)
        .bind(password_hash)
        .bind(now.millis())
        .fetch_optional(&mut *tx)
        .await
        .map_err(err("change password"))?;
        if let Some(row) = &row {
            sqlx::query("DELETE FROM user_sessions WHERE user_id = $1")
                .bind(&row.id)
                .execute(&mut *tx)
                .await
                .map_err(err("end sessions"))?;
        }
        tx.commit().await.map_err(err("change password"))?;
        Ok(row)
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>, StoreError> {
        sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.0)
            .await
            .map_err(err("read user"))
    }

    async fn user_by_email(&self, email_normalized: &str) -> Result<Option<UserRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email_normalized = $1"
        ))
        .bind(email_normalized)
        .fetch_optional(&self.0)
        .await
        .map_err(err("read user"))
    }

    async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY email_normalized"
        ))
        .fetch_all(&self.0)
        .await
        .map_err(err("list users"))
    }

    async fn attempts_since(
        &self,
        email_normalized: &str,
        since: Timestamp,
    ) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT attempted_at FROM user_sign_in_attempts \
             WHERE email_normalized = $1 AND attempted_at > $2 ORDER BY attempted_at DESC",
        )
        .bind(email_normalized)
        .bind(since.millis())
        .fetch_all(&self.0)
        .await
        .map_err(err("read sign-in attempts"))
    }

    async fn insert_attempt(
        &self,
        id: &str,
        email_normalized: &str,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .0
            .begin()
            .await
            .map_err(err("record sign-in attempt"))?;
        sqlx::query(
            "DELETE FROM user_sign_in_attempts WHERE email_normalized = $1 AND attempted_at < $2",
        )
        .bind(email_normalized)
        .bind(forget_before.millis())
        .execute(&mut *tx)
        .await
        .map_err(err("forget old sign-in attempts"))?;
        sqlx::query(
            "INSERT INTO user_sign_in_attempts (id, email_normalized, attempted_at) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(email_normalized)
        .bind(now.millis())
        .execute(&mut *tx)
        .await
        .map_err(err("record sign-in attempt"))?;
        tx.commit().await.map_err(err("record sign-in attempt"))
    }

    async fn clear_attempts(&self, email_normalized: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM user_sign_in_attempts WHERE email_normalized = $1")
            .bind(email_normalized)
            .execute(&self.0)
            .await
            .map_err(err("clear sign-in attempts"))?;
        Ok(())
    }

    async fn insert_session(&self, session: &SessionRecord<'_>) -> Result<(), StoreError> {
        let mut tx = self.0.begin().await.map_err(err("open session"))?;
        sqlx::query("DELETE FROM user_sessions WHERE expires_at <= $1")
            .bind(session.now.millis())
            .execute(&mut *tx)
            .await
            .map_err(err("delete expired sessions"))?;
        sqlx::query(
            "INSERT INTO user_sessions (token_hash, user_id, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.token_hash)
        .bind(session.user_id)
        .bind(session.csrf_token)
        .bind(session.now.millis())
        .bind(session.expires_at.millis())
        .execute(&mut *tx)
        .await
        .map_err(err("open session"))?;
        tx.commit().await.map_err(err("open session"))
    }

    async fn session_by_hash(
        &self,
        token_hash: &[u8],
        now: Timestamp,
    ) -> Result<Option<SessionRow>, StoreError> {
        sqlx::query_as(
            "SELECT s.csrf_token, s.expires_at, u.id, u.email, u.role, u.password_hash, \
             u.time_zone, u.created_at, u.updated_at \
             FROM user_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now.millis())
        .fetch_optional(&self.0)
        .await
        .map_err(err("read session"))
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM user_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.0)
            .await
            .map_err(err("end session"))?;
        Ok(())
    }
}
