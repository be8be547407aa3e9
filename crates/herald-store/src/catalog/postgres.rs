use std::collections::HashSet;

use async_trait::async_trait;
use herald_core::Timestamp;
use sqlx::PgPool;

use super::{
    brand_exists, brand_in_use, sale_in_use, template_in_use, template_name_taken, unknown_brand,
    Brand, BrandRow, CatalogSql, Sale, SaleRow, Template, TemplateRow, BRAND_COLUMNS, SALE_COLUMNS,
    TEMPLATE_COLUMNS,
};
use crate::error::{is_foreign_key_violation, is_unique_violation};
use crate::StoreError;

pub(crate) struct PgCatalogSql(pub PgPool);

fn failed(context: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::postgres(e, context)
}

#[async_trait]
impl CatalogSql for PgCatalogSql {
    async fn insert_brand(
        &self,
        id: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<Brand, StoreError> {
        sqlx::query_as::<_, BrandRow>(&format!(
            "INSERT INTO brands (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             RETURNING {BRAND_COLUMNS}"
        ))
        .bind(id)
        .bind(name)
        .bind(now.millis())
        .fetch_one(&self.0)
        .await
        .map(Brand::from)
        .map_err(|e| {
            if is_unique_violation(&e) {
                brand_exists(id)
            } else {
                StoreError::postgres(e, "create brand")
            }
        })
    }

    async fn upsert_brand(
        &self,
        id: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<(Brand, bool), StoreError> {
        // `xmax` is 0 on a row version this statement inserted.
        let (row, inserted): (BrandRow, bool) = sqlx::query_as::<_, UpsertedBrand>(&format!(
            "INSERT INTO brands (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at \
             RETURNING {BRAND_COLUMNS}, (xmax = 0) AS inserted"
        ))
        .bind(id)
        .bind(name)
        .bind(now.millis())
        .fetch_one(&self.0)
        .await
        .map(|u| (u.row, u.inserted))
        .map_err(failed("upsert brand"))?;
        Ok((row.into(), inserted))
    }

    async fn brand(&self, id: &str) -> Result<Option<Brand>, StoreError> {
        sqlx::query_as::<_, BrandRow>(&format!("SELECT {BRAND_COLUMNS} FROM brands WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.0)
            .await
            .map(|row| row.map(Brand::from))
            .map_err(failed("read brand"))
    }

    async fn brands(&self, after: Option<&str>, limit: u32) -> Result<Vec<Brand>, StoreError> {
        sqlx::query_as::<_, BrandRow>(&format!(
            "SELECT {BRAND_COLUMNS} FROM brands WHERE $1::TEXT IS NULL OR id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.0)
        .await
        .map(|rows| rows.into_iter().map(Brand::from).collect())
        .map_err(failed("list brands"))
    }

    async fn rename_brand(
        &self,
        id: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<Option<Brand>, StoreError> {
        sqlx::query_as::<_, BrandRow>(&format!(
            "UPDATE brands SET name = $2, updated_at = $3 WHERE id = $1 RETURNING {BRAND_COLUMNS}"
        ))
        .bind(id)
        .bind(name)
        .bind(now.millis())
        .fetch_optional(&self.0)
        .await
        .map(|row| row.map(Brand::from))
        .map_err(failed("update brand"))
    }

    async fn delete_brand(&self, id: &str) -> Result<bool, StoreError> {
        delete(
            &self.0,
            "DELETE FROM brands WHERE id = $1",
            id,
            "delete brand",
        )
        .await
        .map_err(|e| match e {
            Deleted::Referenced => brand_in_use(id),
            Deleted::Failed(e) => e,
        })
    }

    async fn existing_brands(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT id FROM brands WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.0)
            .await
            .map_err(failed("look up brands"))?;
        Ok(rows.into_iter().collect())
    }

    async fn insert_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO sales ({SALE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&sale.id)
        .bind(&sale.brand_id)
        .bind(&sale.headline)
        .bind(&sale.url)
        .bind(&sale.image)
        .bind(sale.starts_at.millis())
        .bind(sale.ends_at.map(Timestamp::millis))
        .bind(sale.created_at.millis())
        .bind(sale.updated_at.millis())
        .execute(&self.0)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                unknown_brand(&sale.brand_id)
            } else {
                StoreError::postgres(e, "create sale")
            }
        })?;
        Ok(())
    }

    async fn sale(&self, id: &str) -> Result<Option<Sale>, StoreError> {
        sqlx::query_as::<_, SaleRow>(&format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.0)
            .await
            .map(|row| row.map(Sale::from))
            .map_err(failed("read sale"))
    }

    async fn sales(
        &self,
        brand_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Sale>, StoreError> {
        sqlx::query_as::<_, SaleRow>(&format!(
            "SELECT {SALE_COLUMNS} FROM sales \
             WHERE ($1::TEXT IS NULL OR brand_id = $1) AND ($2::TEXT IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(brand_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.0)
        .await
        .map(|rows| rows.into_iter().map(Sale::from).collect())
        .map_err(failed("list sales"))
    }

    async fn update_sale(&self, sale: &Sale) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sales SET brand_id = $2, headline = $3, url = $4, image = $5, \
             starts_at = $6, ends_at = $7, updated_at = $8 WHERE id = $1",
        )
        .bind(&sale.id)
        .bind(&sale.brand_id)
        .bind(&sale.headline)
        .bind(&sale.url)
        .bind(&sale.image)
        .bind(sale.starts_at.millis())
        .bind(sale.ends_at.map(Timestamp::millis))
        .bind(sale.updated_at.millis())
        .execute(&self.0)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                unknown_brand(&sale.brand_id)
            } else {
                StoreError::postgres(e, "update sale")
            }
        })?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_sale(&self, id: &str) -> Result<bool, StoreError> {
        delete(
            &self.0,
            "DELETE FROM sales WHERE id = $1",
            id,
            "delete sale",
        )
        .await
        .map_err(|e| match e {
            Deleted::Referenced => sale_in_use(id),
            Deleted::Failed(e) => e,
        })
    }

    async fn insert_template(&self, t: &Template) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO templates ({TEMPLATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.subject)
        .bind(&t.html)
        .bind(&t.text)
        .bind(t.created_at.millis())
        .bind(t.updated_at.millis())
        .execute(&self.0)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                template_name_taken(&t.name)
            } else {
                StoreError::postgres(e, "create template")
            }
        })?;
        Ok(())
    }

    async fn template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        sqlx::query_as::<_, TemplateRow>(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.0)
        .await
        .map(|row| row.map(Template::from))
        .map_err(failed("read template"))
    }

    async fn templates(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Template>, StoreError> {
        sqlx::query_as::<_, TemplateRow>(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE $1::TEXT IS NULL OR id > $1 \
             ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.0)
        .await
        .map(|rows| rows.into_iter().map(Template::from).collect())
        .map_err(failed("list templates"))
    }

    async fn update_template(&self, t: &Template) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE templates SET name = $2, subject = $3, html = $4, text = $5, updated_at = $6 \
             WHERE id = $1",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.subject)
        .bind(&t.html)
        .bind(&t.text)
        .bind(t.updated_at.millis())
        .execute(&self.0)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                template_name_taken(&t.name)
            } else {
                StoreError::postgres(e, "update template")
            }
        })?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_template(&self, id: &str) -> Result<bool, StoreError> {
        delete(
            &self.0,
            "DELETE FROM templates WHERE id = $1",
            id,
            "delete template",
        )
        .await
        .map_err(|e| match e {
            Deleted::Referenced => template_in_use(id),
            Deleted::Failed(e) => e,
        })
    }
}

enum Deleted {
    /// A foreign key still points at the row.
    Referenced,
    Failed(StoreError),
}

async fn delete(db: &PgPool, sql: &str, id: &str, context: &str) -> Result<bool, Deleted> {
    let done = sqlx::query(sql).bind(id).execute(db).await.map_err(|e| {
        if is_foreign_key_violation(&e) {
            Deleted::Referenced
        } else {
            Deleted::Failed(StoreError::postgres(e, context))
        }
    })?;
    Ok(done.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct UpsertedBrand {
    #[sqlx(flatten)]
    row: BrandRow,
    inserted: bool,
}
