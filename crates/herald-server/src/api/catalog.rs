//! The catalog: brands (`/api/brands`), their sales (`/api/sales`) and the
//! templates alerts are rendered with (`/api/templates`).
//!
//! Reads need any valid key; writes need the marketing or admin scope.
//! Times are RFC 3339 in UTC (`2026-11-25T12:00:00Z`). Lists are pages of
//! at most `limit` items (default 100, at most 1,000) with a `next_cursor`
//! to pass as `after` while more follow.
//!
//! Templates are checked on every save with `herald_mail::validate`: a
//! syntax error, an unknown variable or a failing trial render is a 422
//! whose `field` is the part (`subject`, `html`, `text`) and whose message
//! names the line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use herald_core::catalog::{BrandId, HttpUrl};
use herald_core::Timestamp;
use herald_mail::{TemplateError, TemplateSource};
use herald_store::catalog::{
    Brand, NewSale, NewTemplate, Sale, SaleFilter, SalePatch, Template, TemplatePatch,
};
use herald_store::page::PageRequest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ErrorResponse;
use crate::auth::{MarketingAccess, ReadAccess};
use crate::{ApiError, ApiJson, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_brands, create_brand))
        .routes(routes!(get_brand, put_brand, update_brand, delete_brand))
        .routes(routes!(list_sales, create_sale))
        .routes(routes!(get_sale, update_sale, delete_sale))
        .routes(routes!(list_templates, create_template))
        .routes(routes!(get_template, update_template, delete_template))
}

/// A moment as RFC 3339 text in UTC, stored as milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-11-25T12:00:00Z")]
pub struct ApiTime(pub Timestamp);

impl Serialize for ApiTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let millis = u64::try_from(self.0 .0).unwrap_or_default();
        let time = UNIX_EPOCH + Duration::from_millis(millis);
        s.collect_str(&humantime::format_rfc3339_millis(time))
    }
}

impl<'de> Deserialize<'de> for ApiTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let time = humantime::parse_rfc3339_weak(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not an RFC 3339 time in UTC such as 2026-11-25T12:00:00Z: {e}"
            ))
        })?;
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| serde::de::Error::custom("times before 1970 are not accepted"))?;
        Ok(ApiTime(Timestamp(
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        )))
    }
}

/// For PATCH bodies: an absent field is `None`, `null` is `Some(None)`.
pub(crate) fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `?after=<cursor>&limit=<n>` of every list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
    /// Items per page: 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

impl PageQuery {
    pub(crate) fn request(&self) -> PageRequest {
        PageRequest {
            after: self.after.clone(),
            limit: self.limit.unwrap_or(0),
        }
    }
}

/// A query string that does not parse is a 400 in the API's error shape.
pub(crate) fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("{what} {id} not found"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BrandResponse {
    pub id: String,
    pub name: String,
    pub created_at: ApiTime,
    pub updated_at: ApiTime,
}

impl From<Brand> for BrandResponse {
    fn from(b: Brand) -> Self {
        Self {
            id: b.id,
            name: b.name,
            created_at: ApiTime(b.created_at),
            updated_at: ApiTime(b.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BrandPage {
    pub items: Vec<BrandResponse>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBrand {
    /// The catalog's own id: `[A-Za-z0-9._:@-]{1,128}`.
    #[schema(value_type = String, example = "nike")]
    pub id: BrandId,
    #[schema(example = "Nike")]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BrandName {
    #[schema(example = "Nike")]
    pub name: String,
}

#[utoipa::path(
    get, path = "/api/brands", tag = "catalog",
    params(PageQuery),
    responses(
        (status = 200, description = "Brands in id order", body = BrandPage),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn list_brands(
    _key: ReadAccess,
    State(state): State<AppState>,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<BrandPage>, ApiError> {
    let page = state
        .store
        .catalog()
        .list_brands(&query(page)?.request())
        .await?;
    Ok(Json(BrandPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(
    post, path = "/api/brands", tag = "catalog",
    request_body = CreateBrand,
    responses(
        (status = 201, description = "Created", body = BrandResponse),
        (status = 409, description = "A brand with this id exists", body = ErrorResponse),
        (status = 422, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
    )
)]
async fn create_brand(
    _key: MarketingAccess,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateBrand>,
) -> Result<(StatusCode, Json<BrandResponse>), ApiError> {
    let brand = state
        .store
        .catalog()
        .create_brand(&body.id, &body.name)
        .await?;
    Ok((StatusCode::CREATED, Json(brand.into())))
}

#[utoipa::path(
    get, path = "/api/brands/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Brand id")),
    responses(
        (status = 200, body = BrandResponse),
        (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn get_brand(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BrandResponse>, ApiError> {
    let brand = state.store.catalog().get_brand(&id).await?;
    brand
        .map(|b| Json(b.into()))
        .ok_or_else(|| not_found("brand", &id))
}

#[utoipa::path(
    put, path = "/api/brands/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Brand id: `[A-Za-z0-9._:@-]{1,128}`")),
    request_body = BrandName,
    responses(
        (status = 201, description = "Created", body = BrandResponse),
        (status = 200, description = "Renamed", body = BrandResponse),
        (status = 422, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
    )
)]
async fn put_brand(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BrandName>,
) -> Result<(StatusCode, Json<BrandResponse>), ApiError> {
    let id = BrandId::parse(&id).map_err(|e| ApiError::invalid_field("id", e.message()))?;
    let (brand, created) = state.store.catalog().upsert_brand(&id, &body.name).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(brand.into())))
}

#[utoipa::path(
    patch, path = "/api/brands/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Brand id")),
    request_body = BrandName,
    responses(
        (status = 200, body = BrandResponse),
        (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn update_brand(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BrandName>,
) -> Result<Json<BrandResponse>, ApiError> {
    let brand = state.store.catalog().update_brand(&id, &body.name).await?;
    Ok(Json(brand.into()))
}

#[utoipa::path(
    delete, path = "/api/brands/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Brand id")),
    responses(
        (status = 204, description = "Deleted, with members' affinities for it"),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "The brand still has sales", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn delete_brand(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.catalog().delete_brand(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SaleResponse {
    pub id: String,
    pub brand_id: String,
    pub headline: String,
    pub url: String,
    pub image: Option<String>,
    pub starts_at: ApiTime,
    pub ends_at: Option<ApiTime>,
    pub created_at: ApiTime,
    pub updated_at: ApiTime,
}

impl From<Sale> for SaleResponse {
    fn from(s: Sale) -> Self {
        Self {
            id: s.id,
            brand_id: s.brand_id,
            headline: s.headline,
            url: s.url,
            image: s.image,
            starts_at: ApiTime(s.starts_at),
            ends_at: s.ends_at.map(ApiTime),
            created_at: ApiTime(s.created_at),
            updated_at: ApiTime(s.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SalePage {
    pub items: Vec<SaleResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSale {
    #[schema(value_type = String, example = "nike")]
    pub brand_id: BrandId,
    #[schema(example = "Up to 50% off running shoes")]
    pub headline: String,
    /// An http or https URL.
    #[schema(value_type = String, example = "https://shop.example/nike")]
    pub url: HttpUrl,
    #[schema(value_type = Option<String>)]
    pub image: Option<HttpUrl>,
    pub starts_at: ApiTime,
    /// After `starts_at`.
    pub ends_at: Option<ApiTime>,
}

/// Fields to change; `null` clears `image` or `ends_at`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSale {
    #[schema(value_type = Option<String>)]
    pub brand_id: Option<BrandId>,
    pub headline: Option<String>,
    #[schema(value_type = Option<String>)]
    pub url: Option<HttpUrl>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub image: Option<Option<HttpUrl>>,
    pub starts_at: Option<ApiTime>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<Option<ApiTime>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SaleQuery {
    /// Only this brand's sales.
    pub brand_id: Option<String>,
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/api/sales", tag = "catalog",
    params(SaleQuery),
    responses(
        (status = 200, description = "Sales in creation order", body = SalePage),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn list_sales(
    _key: ReadAccess,
    State(state): State<AppState>,
    params: Result<Query<SaleQuery>, QueryRejection>,
) -> Result<Json<SalePage>, ApiError> {
    let params = query(params)?;
    let filter = SaleFilter {
        brand_id: params.brand_id,
        page: PageRequest {
            after: params.after,
            limit: params.limit.unwrap_or(0),
        },
    };
    let page = state.store.catalog().list_sales(&filter).await?;
    Ok(Json(SalePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(
    post, path = "/api/sales", tag = "catalog",
    request_body = CreateSale,
    responses(
        (status = 201, body = SaleResponse),
        (status = 422, description = "Invalid field, or an unknown brand", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn create_sale(
    _key: MarketingAccess,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateSale>,
) -> Result<(StatusCode, Json<SaleResponse>), ApiError> {
    let new = NewSale {
        brand_id: body.brand_id,
        headline: body.headline,
        url: body.url,
        image: body.image,
        starts_at: body.starts_at.0,
        ends_at: body.ends_at.map(|t| t.0),
    };
    let sale = state.store.catalog().create_sale(&new).await?;
    Ok((StatusCode::CREATED, Json(sale.into())))
}

#[utoipa::path(
    get, path = "/api/sales/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Sale id")),
    responses(
        (status = 200, body = SaleResponse),
        (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn get_sale(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SaleResponse>, ApiError> {
    let sale = state.store.catalog().get_sale(&id).await?;
    sale.map(|s| Json(s.into()))
        .ok_or_else(|| not_found("sale", &id))
}

#[utoipa::path(
    patch, path = "/api/sales/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Sale id")),
    request_body = UpdateSale,
    responses(
        (status = 200, body = SaleResponse),
        (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn update_sale(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSale>,
) -> Result<Json<SaleResponse>, ApiError> {
    let patch = SalePatch {
        brand_id: body.brand_id,
        headline: body.headline,
        url: body.url,
        image: body.image,
        starts_at: body.starts_at.map(|t| t.0),
        ends_at: body.ends_at.map(|end| end.map(|t| t.0)),
    };
    let sale = state.store.catalog().update_sale(&id, &patch).await?;
    Ok(Json(sale.into()))
}

#[utoipa::path(
    delete, path = "/api/sales/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Sale id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "A brand alert lists the sale", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn delete_sale(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.catalog().delete_sale(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateResponse {
    pub id: String,
    pub name: String,
    pub subject: String,
    pub html: String,
    pub text: Option<String>,
    pub created_at: ApiTime,
    pub updated_at: ApiTime,
}

impl From<Template> for TemplateResponse {
    fn from(t: Template) -> Self {
        Self {
            id: t.id,
            name: t.name,
            subject: t.subject,
            html: t.html,
            text: t.text,
            created_at: ApiTime(t.created_at),
            updated_at: ApiTime(t.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplatePage {
    pub items: Vec<TemplateResponse>,
    pub next_cursor: Option<String>,
}

/// Subject, HTML and optional text in minijinja syntax. The render context
/// offers `member` (first_name, name, email, locale, time_zone), `alert`
/// (id, subject), `brands` (id, name), `sales` (brand, headline, url,
/// image, starts_at, ends_at) and `unsubscribe_url`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// Unique among templates.
    pub name: String,
    #[schema(example = "{{ member.first_name }}, your brands are on sale")]
    pub subject: String,
    pub html: String,
    pub text: Option<String>,
}

/// Fields to change; `"text": null` removes the text part.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTemplate {
    pub name: Option<String>,
    pub subject: Option<String>,
    pub html: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub text: Option<Option<String>>,
}

/// A 422 naming the first failing part, with every problem in the message.
fn invalid_template(errors: &[TemplateError]) -> ApiError {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut error = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_template",
        message,
    );
    if let Some(first) = errors.first() {
        error = error.with_field(first.part.as_str());
    }
    error
}

fn validate_template(t: &NewTemplate) -> Result<(), ApiError> {
    let source = TemplateSource {
        subject: t.subject.clone(),
        html: t.html.clone(),
        text: t.text.clone(),
    };
    herald_mail::validate(&source).map_err(|errors| invalid_template(&errors))
}

#[utoipa::path(
    get, path = "/api/templates", tag = "catalog",
    params(PageQuery),
    responses(
        (status = 200, description = "Templates in creation order", body = TemplatePage),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn list_templates(
    _key: ReadAccess,
    State(state): State<AppState>,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<TemplatePage>, ApiError> {
    let page = state
        .store
        .catalog()
        .list_templates(&query(page)?.request())
        .await?;
    Ok(Json(TemplatePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(
    post, path = "/api/templates", tag = "catalog",
    request_body = CreateTemplate,
    responses(
        (status = 201, body = TemplateResponse),
        (status = 409, description = "The name is taken", body = ErrorResponse),
        (status = 422, description = "A part does not compile or uses an unknown variable; \
            `field` names the part, the message the line", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn create_template(
    _key: MarketingAccess,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateTemplate>,
) -> Result<(StatusCode, Json<TemplateResponse>), ApiError> {
    let new = NewTemplate {
        name: body.name,
        subject: body.subject,
        html: body.html,
        text: body.text,
    };
    validate_template(&new)?;
    let template = state.store.catalog().create_template(&new).await?;
    Ok((StatusCode::CREATED, Json(template.into())))
}

#[utoipa::path(
    get, path = "/api/templates/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 200, body = TemplateResponse),
        (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse),
    )
)]
async fn get_template(
    _key: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TemplateResponse>, ApiError> {
    let template = state.store.catalog().get_template(&id).await?;
    template
        .map(|t| Json(t.into()))
        .ok_or_else(|| not_found("template", &id))
}

#[utoipa::path(
    patch, path = "/api/templates/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Template id")),
    request_body = UpdateTemplate,
    responses(
        (status = 200, body = TemplateResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "The new name is taken", body = ErrorResponse),
        (status = 422, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn update_template(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateTemplate>,
) -> Result<Json<TemplateResponse>, ApiError> {
    let catalog = state.store.catalog();
    let current = catalog
        .get_template(&id)
        .await?
        .ok_or_else(|| not_found("template", &id))?;
    let patch = TemplatePatch {
        name: body.name,
        subject: body.subject,
        html: body.html,
        text: body.text,
    };
    validate_template(&current.patched(&patch))?;
    let template = catalog.update_template(&id, &patch).await?;
    Ok(Json(template.into()))
}

#[utoipa::path(
    delete, path = "/api/templates/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "A brand alert uses the template", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
    )
)]
async fn delete_template(
    _key: MarketingAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.catalog().delete_template(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
