//! The catalog: brands (list and add), sales (list by brand) and templates
//! (list, and an editor that checks a template the way the API does before
//! saving — `herald_mail::validate` — and previews it with the example
//! member data).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use herald_core::catalog::{BrandId, HttpUrl};
use herald_mail::{RenderContext, TemplateError, TemplateSource};
use herald_store::catalog::{
    Brand, NewSale, NewTemplate, Sale, SaleFilter, Template, TemplatePatch,
};
use herald_store::page::PageRequest;
use serde::{Deserialize, Serialize};

use super::{field_error, read_all, FieldErrors};
use crate::auth::{encode, Signed};
use crate::form::FormData;
use crate::time::Zone;
use crate::{WebError, WebState};

/// Rows per list page.
const PAGE_SIZE: u32 = 50;
const MAX_BRANDS: usize = 2000;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/ui/brands", get(brands).post(create_brand))
        .route("/ui/sales", get(sales).post(create_sale))
        .route("/ui/templates", get(templates))
        .route("/ui/templates/new", get(new_template).post(create_template))
        .route("/ui/templates/{id}", get(edit_template).post(save_template))
}

#[derive(Debug, Default, Deserialize)]
struct CursorQuery {
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    brand: String,
}

fn page_request(cursor: &str) -> PageRequest {
    PageRequest {
        after: Some(cursor.to_owned()).filter(|c| !c.is_empty()),
        limit: PAGE_SIZE,
    }
}

// ---------------------------------------------------------------- brands

/// What the brands page is given.
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct BrandsPage {
    pub rows: Vec<BrandRow>,
    pub next_url: Option<String>,
    pub new_id: String,
    pub new_name: String,
    pub errors: FieldErrors,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BrandRow {
    pub id: String,
    pub name: String,
    pub sales_url: String,
}

pub fn brand_rows(brands: &[Brand]) -> Vec<BrandRow> {
    brands
        .iter()
        .map(|b| BrandRow {
            id: b.id.clone(),
            name: b.name.clone(),
            sales_url: format!("/ui/sales?brand={}", encode(&b.id)),
        })
        .collect()
}

async fn brands_page(
    state: &WebState,
    signed: &Signed,
    cursor: &str,
    mut page: BrandsPage,
) -> Result<Response, WebError> {
    let listed = state
        .app
        .store
        .catalog()
        .list_brands(&page_request(cursor))
        .await?;
    page.rows = brand_rows(&listed.items);
    page.next_url = listed
        .next_cursor
        .map(|c| format!("/ui/brands?cursor={}", encode(&c)));
    let status = if page.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let html = state.page(
        "catalog/brands.html",
        &signed.layout("brands", "Brands"),
        &page,
    )?;
    Ok((status, html).into_response())
}

async fn brands(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<CursorQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    brands_page(&state, &signed, &query.cursor, BrandsPage::default()).await
}

async fn create_brand(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let form = FormData::parse(&body);
    let mut page = BrandsPage {
        new_id: form.get("id").trim().to_owned(),
        new_name: form.get("name").trim().to_owned(),
        ..BrandsPage::default()
    };
    match BrandId::parse(&page.new_id) {
        Err(e) => {
            page.errors.insert("id".into(), e.message().to_owned());
        }
        Ok(id) => match state
            .app
            .store
            .catalog()
            .create_brand(&id, &page.new_name)
            .await
        {
            Ok(_) => return Ok(Redirect::to("/ui/brands").into_response()),
            Err(herald_store::StoreError::Conflict { what }) => {
                page.errors.insert("id".into(), what);
            }
            Err(e) => field_error(e, &mut page.errors)?,
        },
    }
    brands_page(&state, &signed, "", page).await
}

// ---------------------------------------------------------------- sales

/// What the sales page is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct SalesPage {
    pub brand: String,
    pub brands: Vec<BrandOption>,
    pub rows: Vec<SaleRow>,
    pub next_url: Option<String>,
    pub zone: &'static str,
    /// The create form's values, as typed.
    pub form: SaleForm,
    pub errors: FieldErrors,
}

/// The sale create form's fields, as typed (times in the user's zone).
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct SaleForm {
    pub brand_id: String,
    pub headline: String,
    pub url: String,
    pub image: String,
    pub starts_at: String,
    pub ends_at: String,
}

impl SaleForm {
    pub fn read(form: &FormData) -> Self {
        let field = |name| form.get(name).trim().to_owned();
        Self {
            brand_id: field("brand_id"),
            headline: field("headline"),
            url: field("url"),
            image: field("image"),
            starts_at: field("starts_at"),
            ends_at: field("ends_at"),
        }
    }

    /// The sale to create, or every field's error at once; the store
    /// checks the rest (headline, ends after starts, the brand exists) as
    /// it does for the API.
    pub fn to_new(&self, zone: Zone) -> Result<NewSale, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut note = |field: &str, message: String| {
            errors.insert(field.to_owned(), message);
        };
        let brand_id = BrandId::parse(&self.brand_id)
            .map_err(|e| note("brand_id", e.message().to_owned()))
            .ok();
        let url = HttpUrl::parse(&self.url)
            .map_err(|e| note("url", e.message().to_owned()))
            .ok();
        let image = if self.image.is_empty() {
            Some(None)
        } else {
            HttpUrl::parse(&self.image)
                .map(Some)
                .map_err(|e| note("image", e.message().to_owned()))
                .ok()
        };
        let starts_at = zone
            .parse_input(&self.starts_at)
            .map_err(|e| note("starts_at", e))
            .ok();
        let ends_at = if self.ends_at.is_empty() {
            Some(None)
        } else {
            zone.parse_input(&self.ends_at)
                .map(Some)
                .map_err(|e| note("ends_at", e))
                .ok()
        };
        match (brand_id, url, image, starts_at, ends_at) {
            (Some(brand_id), Some(url), Some(image), Some(starts_at), Some(ends_at)) => {
                Ok(NewSale {
                    brand_id,
                    headline: self.headline.clone(),
                    url,
                    image,
                    starts_at,
                    ends_at,
                })
            }
            _ => Err(errors),
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BrandOption {
    pub id: String,
    pub name: String,
    pub selected: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SaleRow {
    pub id: String,
    pub brand: String,
    pub headline: String,
    pub url: String,
    pub starts_at: String,
    pub ends_at: String,
}

pub fn sale_rows(
    sales: &[Sale],
    brand_names: &HashMap<String, String>,
    zone: Zone,
) -> Vec<SaleRow> {
    sales
        .iter()
        .map(|s| SaleRow {
            id: s.id.clone(),
            brand: brand_names
                .get(&s.brand_id)
                .cloned()
                .unwrap_or_else(|| s.brand_id.clone()),
            headline: s.headline.clone(),
            url: s.url.clone(),
            starts_at: zone.format(s.starts_at),
            ends_at: s
                .ends_at
                .map_or_else(|| "open-ended".into(), |t| zone.format(t)),
        })
        .collect()
}

async fn sales(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<CursorQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    sales_page(
        &state,
        &signed,
        &query,
        SaleForm::default(),
        FieldErrors::new(),
    )
    .await
}

async fn create_sale(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let form = SaleForm::read(&FormData::parse(&body));
    let mut errors = FieldErrors::new();
    match form.to_new(signed.zone()) {
        Err(found) => errors = found,
        Ok(new) => match state.app.store.catalog().create_sale(&new).await {
            Ok(sale) => {
                return Ok(
                    Redirect::to(&format!("/ui/sales?brand={}", encode(&sale.brand_id)))
                        .into_response(),
                )
            }
            Err(e) => field_error(e, &mut errors)?,
        },
    }
    sales_page(&state, &signed, &CursorQuery::default(), form, errors).await
}

async fn sales_page(
    state: &WebState,
    signed: &Signed,
    query: &CursorQuery,
    form: SaleForm,
    errors: FieldErrors,
) -> Result<Response, WebError> {
    let catalog = state.app.store.catalog();
    let brands = read_all(MAX_BRANDS, |p| async move { catalog.list_brands(&p).await }).await?;
    let names: HashMap<String, String> = brands
        .iter()
        .map(|b| (b.id.clone(), b.name.clone()))
        .collect();
    let brand = Some(query.brand.trim().to_owned()).filter(|b| !b.is_empty());
    let listed = catalog
        .list_sales(&SaleFilter {
            brand_id: brand.clone(),
            page: page_request(&query.cursor),
        })
        .await?;
    let zone = signed.zone();
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let page = SalesPage {
        brands: brands
            .iter()
            .map(|b| BrandOption {
                id: b.id.clone(),
                name: b.name.clone(),
                selected: brand.as_deref() == Some(b.id.as_str()),
            })
            .collect(),
        rows: sale_rows(&listed.items, &names, zone),
        next_url: listed.next_cursor.map(|c| {
            format!(
                "/ui/sales?brand={}&cursor={}",
                encode(brand.as_deref().unwrap_or_default()),
                encode(&c)
            )
        }),
        brand: brand.unwrap_or_default(),
        zone: zone.name(),
        form,
        errors,
    };
    let html = state.page(
        "catalog/sales.html",
        &signed.layout("sales", "Sales"),
        &page,
    )?;
    Ok((status, html).into_response())
}

// ---------------------------------------------------------------- templates

/// What the templates list is given.
#[derive(Debug, Serialize, PartialEq)]
pub struct TemplatesPage {
    pub rows: Vec<TemplateRow>,
    pub next_url: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TemplateRow {
    pub id: String,
    pub name: String,
    pub subject: String,
    pub has_text: bool,
}

async fn templates(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    query: Result<Query<CursorQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let listed = state
        .app
        .store
        .catalog()
        .list_templates(&page_request(&query.cursor))
        .await?;
    let page = TemplatesPage {
        rows: listed
            .items
            .iter()
            .map(|t| TemplateRow {
                id: t.id.clone(),
                name: t.name.clone(),
                subject: t.subject.clone(),
                has_text: t.text.is_some(),
            })
            .collect(),
        next_url: listed
            .next_cursor
            .map(|c| format!("/ui/templates?cursor={}", encode(&c))),
    };
    Ok(state
        .page(
            "catalog/templates.html",
            &signed.layout("templates", "Templates"),
            &page,
        )?
        .into_response())
}

/// What the template editor is given.
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct TemplateFormPage {
    pub heading: String,
    pub action: String,
    pub name: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    pub errors: FieldErrors,
    /// Problems in the template itself, by part and line.
    pub template_errors: Vec<String>,
    pub saved: bool,
    pub preview: Option<TemplatePreview>,
}

/// The template rendered with the example member data.
#[derive(Debug, Serialize, PartialEq)]
pub struct TemplatePreview {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl TemplateFormPage {
    fn of(template: &Template) -> Self {
        Self {
            heading: format!("Template: {}", template.name),
            action: format!("/ui/templates/{}", template.id),
            name: template.name.clone(),
            subject: template.subject.clone(),
            html: template.html.clone(),
            text: template.text.clone().unwrap_or_default(),
            ..Self::default()
        }
    }

    fn source(&self) -> TemplateSource {
        TemplateSource {
            subject: self.subject.clone(),
            html: self.html.clone(),
            text: Some(self.text.clone()).filter(|t| !t.trim().is_empty()),
        }
    }
}

/// Checks the template as the API does on save; when it is valid, renders
/// it with the example data for the preview.
pub fn check_template(source: &TemplateSource) -> Result<TemplatePreview, Vec<String>> {
    let describe =
        |errors: Vec<TemplateError>| errors.iter().map(ToString::to_string).collect::<Vec<_>>();
    herald_mail::validate(source).map_err(describe)?;
    let template = herald_mail::Template::compile(source).map_err(describe)?;
    template
        .render(&RenderContext::example())
        .map(|r| TemplatePreview {
            subject: r.subject,
            html: r.html,
            text: r.text,
        })
        .map_err(|e| vec![e.to_string()])
}

fn template_form(
    state: &WebState,
    signed: &Signed,
    page: &TemplateFormPage,
) -> Result<Response, WebError> {
    let status = if page.errors.is_empty() && page.template_errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let html = state.page(
        "catalog/template_form.html",
        &signed.layout("templates", page.heading.clone()),
        page,
    )?;
    Ok((status, html).into_response())
}

fn from_form(form: &FormData, heading: String, action: String) -> TemplateFormPage {
    TemplateFormPage {
        heading,
        action,
        name: form.get("name").trim().to_owned(),
        subject: form.get("subject").to_owned(),
        html: form.get("html").to_owned(),
        text: form.get("text").to_owned(),
        ..TemplateFormPage::default()
    }
}

async fn new_template(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
) -> Result<Response, WebError> {
    let page = TemplateFormPage {
        heading: "New template".into(),
        action: "/ui/templates/new".into(),
        subject: "{{ alert.subject }}".into(),
        ..TemplateFormPage::default()
    };
    template_form(&state, &signed, &page)
}

async fn create_template(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let form = FormData::parse(&body);
    let mut page = from_form(&form, "New template".into(), "/ui/templates/new".into());
    match check_template(&page.source()) {
        Err(errors) => page.template_errors = errors,
        Ok(_) => {
            let source = page.source();
            let new = NewTemplate {
                name: page.name.clone(),
                subject: source.subject,
                html: source.html,
                text: source.text,
            };
            match state.app.store.catalog().create_template(&new).await {
                Ok(created) => {
                    return Ok(
                        Redirect::to(&format!("/ui/templates/{}?saved=1", created.id))
                            .into_response(),
                    )
                }
                Err(e) => field_error(e, &mut page.errors)?,
            }
        }
    }
    template_form(&state, &signed, &page)
}

#[derive(Debug, Default, Deserialize)]
struct SavedQuery {
    #[serde(default)]
    saved: String,
}

async fn edit_template(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    query: Result<Query<SavedQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let template = state
        .app
        .store
        .catalog()
        .get_template(&id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("There is no template {id}.")))?;
    let mut page = TemplateFormPage::of(&template);
    page.saved = query.is_ok_and(|Query(q)| !q.saved.is_empty());
    match check_template(&page.source()) {
        Ok(preview) => page.preview = Some(preview),
        Err(errors) => page.template_errors = errors,
    }
    template_form(&state, &signed, &page)
}

async fn save_template(
    State(state): State<WebState>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
    body: bytes::Bytes,
) -> Result<Response, WebError> {
    let form = FormData::parse(&body);
    let mut page = from_form(&form, "Edit template".into(), format!("/ui/templates/{id}"));
    match check_template(&page.source()) {
        Err(errors) => page.template_errors = errors,
        Ok(preview) => {
            let source = page.source();
            let patch = TemplatePatch {
                name: Some(page.name.clone()),
                subject: Some(source.subject),
                html: Some(source.html),
                text: Some(source.text),
            };
            match state.app.store.catalog().update_template(&id, &patch).await {
                Ok(_) => {
                    return Ok(Redirect::to(&format!("/ui/templates/{id}?saved=1")).into_response())
                }
                Err(e) => {
                    page.preview = Some(preview);
                    field_error(e, &mut page.errors)?;
                }
            }
        }
    }
    template_form(&state, &signed, &page)
}

#[cfg(test)]
mod tests {
    use herald_core::Timestamp;

    use super::*;

    #[test]
    fn the_sale_form_reads_times_in_the_users_zone_and_optional_fields_as_none() {
        let form = SaleForm::read(&FormData::parse(
            b"brand_id=+fjord+&headline=Boots&url=https%3A%2F%2Fx.example%2Fb&image=&starts_at=2024-05-01T14%3A00&ends_at=",
        ));
        assert_eq!(form.brand_id, "fjord");
        let new = form.to_new(Zone::named(Some("Europe/Paris"))).unwrap();
        assert_eq!(new.brand_id.to_string(), "fjord");
        assert_eq!(
            new.starts_at,
            Timestamp(1_714_564_800_000),
            "14:00 in Paris is 12:00 UTC"
        );
        assert_eq!((new.image, new.ends_at), (None, None));
    }

    #[test]
    fn the_sale_form_names_every_bad_field_at_once() {
        let form = SaleForm {
            brand_id: "not a brand!".into(),
            headline: "x".into(),
            url: "javascript:alert(1)".into(),
            image: "ftp://x".into(),
            starts_at: "2024-13-01T10:00".into(),
            ends_at: "soon".into(),
        };
        let errors = form.to_new(Zone::utc()).unwrap_err();
        assert_eq!(
            errors.keys().map(String::as_str).collect::<Vec<_>>(),
            ["brand_id", "ends_at", "image", "starts_at", "url"]
        );
    }

    #[test]
    fn template_errors_name_the_part_and_line() {
        let source = TemplateSource {
            subject: "{{ alert.subject }}".into(),
            html: "<p>ok</p>\n{% for sale in sales %}".into(),
            text: None,
        };
        let errors = check_template(&source).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("html") && e.contains("line")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_valid_template_previews_with_the_example_member() {
        let source = TemplateSource {
            subject: "{{ alert.subject }}".into(),
            html:
                "<p>Hi {{ member.first_name }}</p>{% for s in sales %}{{ s.headline }}{% endfor %}"
                    .into(),
            text: None,
        };
        let preview = check_template(&source).unwrap();
        assert!(preview.html.contains("<p>Hi "), "{}", preview.html);
        assert!(!preview.subject.is_empty());
        assert!(
            !preview.text.is_empty(),
            "a text part is derived from the HTML"
        );
    }

    #[test]
    fn sale_rows_name_brands_and_open_ends() {
        let sale = Sale {
            id: "s1".into(),
            brand_id: "fjord".into(),
            headline: "Boots".into(),
            url: "https://shop.example.com".into(),
            image: None,
            starts_at: Timestamp(0),
            ends_at: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        let names = HashMap::from([("fjord".to_owned(), "Fjord Footwear".to_owned())]);
        let rows = sale_rows(&[sale], &names, Zone::utc());
        assert_eq!(rows[0].brand, "Fjord Footwear");
        assert_eq!(rows[0].ends_at, "open-ended");
        assert_eq!(rows[0].starts_at, "1970-01-01 00:00");
        let rows = brand_rows(&[Brand {
            id: "a b".into(),
            name: "AB".into(),
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }]);
        assert_eq!(rows[0].sales_url, "/ui/sales?brand=a+b");
    }
}
