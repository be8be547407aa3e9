//! The catalog: brands (keyed by the catalog's own ids), their sales, and
//! the templates brand alerts are rendered with.
//!
//! Deleting is refused with [`StoreError::InUse`] while something refers to
//! the row: a brand with sales, a sale or a template a brand alert uses.
//! The database's foreign keys make that check, so it holds against
//! concurrent writers too. Deleting a brand removes members' affinities for
//! it.
//!
//! Templates are stored as given; checking their syntax and variables is
//! the API's job (`herald_mail::validate`), which knows the render context.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::catalog::{check_text, BrandId, HttpUrl};
use herald_core::{Clock, Timestamp};
use uuid::Uuid;

use crate::page::{Page, PageRequest};
use crate::StoreError;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// The longest brand or template name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest sale headline, in characters.
pub const MAX_HEADLINE_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brand {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    pub id: String,
    pub brand_id: String,
    pub headline: String,
    pub url: String,
    pub image: Option<String>,
    pub starts_at: Timestamp,
    pub ends_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSale {
    pub brand_id: BrandId,
    pub headline: String,
    pub url: HttpUrl,
    pub image: Option<HttpUrl>,
    pub starts_at: Timestamp,
    /// When given, after `starts_at`.
    pub ends_at: Option<Timestamp>,
}

/// A change to a sale; `None` leaves a field as it is, `Some(None)` clears
/// an optional one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SalePatch {
    pub brand_id: Option<BrandId>,
    pub headline: Option<String>,
    pub url: Option<HttpUrl>,
    pub image: Option<Option<HttpUrl>>,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Option<Timestamp>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SaleFilter {
    /// Only this brand's sales.
    pub brand_id: Option<String>,
    pub page: PageRequest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: String,
    /// Unique among templates.
    pub name: String,
    pub subject: String,
    pub html: String,
    pub text: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTemplate {
    pub name: String,
    pub subject: String,
    pub html: String,
    pub text: Option<String>,
}

/// A change to a template; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplatePatch {
    pub name: Option<String>,
    pub subject: Option<String>,
    pub html: Option<String>,
    /// `Some(None)` removes the text part.
    pub text: Option<Option<String>>,
}

impl Template {
    /// The template with `patch` applied, as it would be stored.
    pub fn patched(&self, patch: &TemplatePatch) -> NewTemplate {
        NewTemplate {
            name: patch.name.clone().unwrap_or_else(|| self.name.clone()),
            subject: patch
                .subject
                .clone()
                .unwrap_or_else(|| self.subject.clone()),
            html: patch.html.clone().unwrap_or_else(|| self.html.clone()),
            text: patch.text.clone().unwrap_or_else(|| self.text.clone()),
        }
    }
}

#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// A new brand; an id already used is a [`StoreError::Conflict`].
    async fn create_brand(&self, id: &BrandId, name: &str) -> Result<Brand, StoreError>;

    /// Creates the brand or renames it; true when it was created.
    async fn upsert_brand(&self, id: &BrandId, name: &str) -> Result<(Brand, bool), StoreError>;

    async fn get_brand(&self, id: &str) -> Result<Option<Brand>, StoreError>;

    /// In id order.
    async fn list_brands(&self, page: &PageRequest) -> Result<Page<Brand>, StoreError>;

    /// Renames an existing brand; an unknown id is [`StoreError::NotFound`].
    async fn update_brand(&self, id: &str, name: &str) -> Result<Brand, StoreError>;

    /// [`StoreError::InUse`] while a sale refers to the brand.
    async fn delete_brand(&self, id: &str) -> Result<(), StoreError>;

    /// Which of `ids` are brands.
    async fn existing_brands(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError>;

    /// A new sale with a fresh (time-ordered) id. An unknown brand is
    /// [`StoreError::InvalidInput`] on `brand_id`.
    async fn create_sale(&self, new: &NewSale) -> Result<Sale, StoreError>;

    async fn get_sale(&self, id: &str) -> Result<Option<Sale>, StoreError>;

    /// In id order, which is creation order.
    async fn list_sales(&self, filter: &SaleFilter) -> Result<Page<Sale>, StoreError>;

    async fn update_sale(&self, id: &str, patch: &SalePatch) -> Result<Sale, StoreError>;

    /// [`StoreError::InUse`] while a brand alert lists the sale.
    async fn delete_sale(&self, id: &str) -> Result<(), StoreError>;

    /// A new template with a fresh id; a name already used is a
    /// [`StoreError::Conflict`].
    async fn create_template(&self, new: &NewTemplate) -> Result<Template, StoreError>;

    async fn get_template(&self, id: &str) -> Result<Option<Template>, StoreError>;

    /// In id order, which is creation order.
    async fn list_templates(&self, page: &PageRequest) -> Result<Page<Template>, StoreError>;

    async fn update_template(
        &self,
        id: &str,
        patch: &TemplatePatch,
    ) -> Result<Template, StoreError>;

    /// [`StoreError::InUse`] while a brand alert uses the template.
    async fn delete_template(&self, id: &str) -> Result<(), StoreError>;
}

/// The statements one dialect runs; [`Catalog`] holds the rules, once.
/// Inserts and updates report a broken reference as [`StoreError::InvalidInput`]
/// and a duplicate as [`StoreError::Conflict`]; deletes report a row still
/// referenced as [`StoreError::InUse`] and return whether a row went.
#[async_trait]
pub(crate) trait CatalogSql: Send + Sync + 'static {
    async fn insert_brand(&self, id: &str, name: &str, now: Timestamp)
        -> Result<Brand, StoreError>;
    /// The brand and whether it was created.
    async fn upsert_brand(
        &self,
        id: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<(Brand, bool), StoreError>;
    async fn brand(&self, id: &str) -> Result<Option<Brand>, StoreError>;
    async fn brands(&self, after: Option<&str>, limit: u32) -> Result<Vec<Brand>, StoreError>;
    async fn rename_brand(
        &self,
        id: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<Option<Brand>, StoreError>;
    async fn delete_brand(&self, id: &str) -> Result<bool, StoreError>;
    async fn existing_brands(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError>;

    async fn insert_sale(&self, sale: &Sale) -> Result<(), StoreError>;
    async fn sale(&self, id: &str) -> Result<Option<Sale>, StoreError>;
    async fn sales(
        &self,
        brand_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Sale>, StoreError>;
    /// Writes every field but the id and `created_at`; false if the sale is gone.
    async fn update_sale(&self, sale: &Sale) -> Result<bool, StoreError>;
    async fn delete_sale(&self, id: &str) -> Result<bool, StoreError>;

    async fn insert_template(&self, template: &Template) -> Result<(), StoreError>;
    async fn template(&self, id: &str) -> Result<Option<Template>, StoreError>;
    async fn templates(&self, after: Option<&str>, limit: u32)
        -> Result<Vec<Template>, StoreError>;
    /// Writes every field but the id and `created_at`; false if it is gone.
    async fn update_template(&self, template: &Template) -> Result<bool, StoreError>;
    async fn delete_template(&self, id: &str) -> Result<bool, StoreError>;
}

pub(crate) struct Catalog<S> {
    sql: S,
    clock: Arc<dyn Clock>,
}

impl<S: CatalogSql> Catalog<S> {
    pub fn new(sql: S, clock: Arc<dyn Clock>) -> Self {
        Self { sql, clock }
    }
}

fn check_field(field: &'static str, what: &str, text: &str, max: usize) -> Result<(), StoreError> {
    check_text(what, text, max).map_err(|e| StoreError::InvalidInput {
        field,
        message: e.to_string(),
    })
}

fn not_found(what: impl Into<String>) -> StoreError {
    StoreError::NotFound { what: what.into() }
}

fn check_sale(sale: &Sale) -> Result<(), StoreError> {
    check_field("headline", "headline", &sale.headline, MAX_HEADLINE_CHARS)?;
    if sale.ends_at.is_some_and(|end| end <= sale.starts_at) {
        return Err(StoreError::InvalidInput {
            field: "ends_at",
            message: "ends_at must be after starts_at".into(),
        });
    }
    Ok(())
}

fn check_template(t: &NewTemplate) -> Result<(), StoreError> {
    check_field("name", "template name", &t.name, MAX_NAME_CHARS)
}

#[async_trait]
impl<S: CatalogSql> CatalogStore for Catalog<S> {
    async fn create_brand(&self, id: &BrandId, name: &str) -> Result<Brand, StoreError> {
        check_field("name", "brand name", name, MAX_NAME_CHARS)?;
        self.sql
            .insert_brand(id.as_str(), name, self.clock.now())
            .await
    }

    async fn upsert_brand(&self, id: &BrandId, name: &str) -> Result<(Brand, bool), StoreError> {
        check_field("name", "brand name", name, MAX_NAME_CHARS)?;
        self.sql
            .upsert_brand(id.as_str(), name, self.clock.now())
            .await
    }

    async fn get_brand(&self, id: &str) -> Result<Option<Brand>, StoreError> {
        self.sql.brand(id).await
    }

    async fn list_brands(&self, page: &PageRequest) -> Result<Page<Brand>, StoreError> {
        let limit = page.effective_limit();
        let rows = self.sql.brands(page.after.as_deref(), limit + 1).await?;
        Ok(Page::from_rows(rows, limit, |b| b.id.clone()))
    }

    async fn update_brand(&self, id: &str, name: &str) -> Result<Brand, StoreError> {
        check_field("name", "brand name", name, MAX_NAME_CHARS)?;
        self.sql
            .rename_brand(id, name, self.clock.now())
            .await?
            .ok_or_else(|| not_found(format!("brand {id}")))
    }

    async fn delete_brand(&self, id: &str) -> Result<(), StoreError> {
        if self.sql.delete_brand(id).await? {
            Ok(())
        } else {
            Err(not_found(format!("brand {id}")))
        }
    }

    async fn existing_brands(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        self.sql.existing_brands(ids).await
    }

    async fn create_sale(&self, new: &NewSale) -> Result<Sale, StoreError> {
        let now = self.clock.now();
        let sale = Sale {
            id: Uuid::now_v7().to_string(),
            brand_id: new.brand_id.to_string(),
            headline: new.headline.clone(),
            url: new.url.to_string(),
            image: new.image.as_ref().map(ToString::to_string),
            starts_at: new.starts_at,
            ends_at: new.ends_at,
            created_at: now,
            updated_at: now,
        };
        check_sale(&sale)?;
        self.sql.insert_sale(&sale).await?;
        Ok(sale)
    }

    async fn get_sale(&self, id: &str) -> Result<Option<Sale>, StoreError> {
        self.sql.sale(id).await
    }

    async fn list_sales(&self, filter: &SaleFilter) -> Result<Page<Sale>, StoreError> {
        let limit = filter.page.effective_limit();
        let rows = self
            .sql
            .sales(
                filter.brand_id.as_deref(),
                filter.page.after.as_deref(),
                limit + 1,
            )
            .await?;
        Ok(Page::from_rows(rows, limit, |s| s.id.clone()))
    }

    async fn update_sale(&self, id: &str, patch: &SalePatch) -> Result<Sale, StoreError> {
        let mut sale = self
            .sql
            .sale(id)
            .await?
            .ok_or_else(|| not_found(format!("sale {id}")))?;
        if let Some(brand_id) = &patch.brand_id {
            sale.brand_id = brand_id.to_string();
        }
        if let Some(headline) = &patch.headline {
            sale.headline.clone_from(headline);
        }
        if let Some(url) = &patch.url {
            sale.url = url.to_string();
        }
        if let Some(image) = &patch.image {
            sale.image = image.as_ref().map(ToString::to_string);
        }
        if let Some(starts_at) = patch.starts_at {
            sale.starts_at = starts_at;
        }
        if let Some(ends_at) = patch.ends_at {
            sale.ends_at = ends_at;
        }
        sale.updated_at = self.clock.now();
        check_sale(&sale)?;
        if self.sql.update_sale(&sale).await? {
            Ok(sale)
        } else {
            Err(not_found(format!("sale {id}")))
        }
    }

    async fn delete_sale(&self, id: &str) -> Result<(), StoreError> {
        if self.sql.delete_sale(id).await? {
            Ok(())
        } else {
            Err(not_found(format!("sale {id}")))
        }
    }

    async fn create_template(&self, new: &NewTemplate) -> Result<Template, StoreError> {
        check_template(new)?;
        let now = self.clock.now();
        let template = Template {
            id: Uuid::now_v7().to_string(),
            name: new.name.clone(),
            subject: new.subject.clone(),
            html: new.html.clone(),
            text: new.text.clone(),
            created_at: now,
            updated_at: now,
        };
        self.sql.insert_template(&template).await?;
        Ok(template)
    }

    async fn get_template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        self.sql.template(id).await
    }

    async fn list_templates(&self, page: &PageRequest) -> Result<Page<Template>, StoreError> {
        let limit = page.effective_limit();
        let rows = self.sql.templates(page.after.as_deref(), limit + 1).await?;
        Ok(Page::from_rows(rows, limit, |t| t.id.clone()))
    }

    async fn update_template(
        &self,
        id: &str,
        patch: &TemplatePatch,
    ) -> Result<Template, StoreError> {
        let current = self
            .sql
            .template(id)
            .await?
            .ok_or_else(|| not_found(format!("template {id}")))?;
        let next = current.patched(patch);
        check_template(&next)?;
        let template = Template {
            id: current.id,
            name: next.name,
            subject: next.subject,
            html: next.html,
            text: next.text,
            created_at: current.created_at,
            updated_at: self.clock.now(),
        };
        if self.sql.update_template(&template).await? {
            Ok(template)
        } else {
            Err(not_found(format!("template {id}")))
        }
    }

    async fn delete_template(&self, id: &str) -> Result<(), StoreError> {
        if self.sql.delete_template(id).await? {
            Ok(())
        } else {
            Err(not_found(format!("template {id}")))
        }
    }
}

pub(crate) const BRAND_COLUMNS: &str = "id, name, created_at, updated_at";
pub(crate) const SALE_COLUMNS: &str =
    "id, brand_id, headline, url, image, starts_at, ends_at, created_at, updated_at";
pub(crate) const TEMPLATE_COLUMNS: &str = "id, name, subject, html, text, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct BrandRow {
    id: String,
    name: String,
    created_at: i64,
    updated_at: i64,
}

impl From<BrandRow> for Brand {
    fn from(row: BrandRow) -> Self {
        Brand {
            id: row.id,
            name: row.name,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SaleRow {
    id: String,
    brand_id: String,
    headline: String,
    url: String,
    image: Option<String>,
    starts_at: i64,
    ends_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl From<SaleRow> for Sale {
    fn from(row: SaleRow) -> Self {
        Sale {
            id: row.id,
            brand_id: row.brand_id,
            headline: row.headline,
            url: row.url,
            image: row.image,
            starts_at: Timestamp(row.starts_at),
            ends_at: row.ends_at.map(Timestamp),
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TemplateRow {
    id: String,
    name: String,
    subject: String,
    html: String,
    text: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<TemplateRow> for Template {
    fn from(row: TemplateRow) -> Self {
        Template {
            id: row.id,
            name: row.name,
            subject: row.subject,
            html: row.html,
            text: row.text,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
        }
    }
}

pub(crate) fn brand_exists(id: &str) -> StoreError {
    StoreError::Conflict {
        what: format!("brand {id} already exists"),
    }
}

pub(crate) fn template_name_taken(name: &str) -> StoreError {
    StoreError::Conflict {
        what: format!("a template named {name:?} already exists"),
    }
}

pub(crate) fn unknown_brand(id: &str) -> StoreError {
    StoreError::InvalidInput {
        field: "brand_id",
        message: format!("brand {id} does not exist"),
    }
}

pub(crate) fn brand_in_use(id: &str) -> StoreError {
    StoreError::InUse {
        what: format!("brand {id} already exists"),
        used_by: "sales; delete or move them first".into(),
    }
}

pub(crate) fn sale_in_use(id: &str) -> StoreError {
    StoreError::InUse {
        what: format!("sale {id}"),
        used_by: "a brand alert".into(),
    }
}

pub(crate) fn template_in_use(id: &str) -> StoreError {
    StoreError::InUse {
        what: format!("template {id}"),
        used_by: "a brand alert".into(),
    }
}
