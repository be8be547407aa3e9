//! What every email of one alert shares: the compiled template, the sales
//! and their brands. Loaded once per alert and cached, so the mailer reads
//! the catalog once per alert rather than once per member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use herald_core::Timestamp;
use herald_mail::{
    AlertContext, BrandContext, PreparedAlert, SaleContext, Template, TemplateSource,
};
use herald_store::brand_alerts::BrandAlert;
use herald_store::{Store, StoreError};

/// Why an alert's content cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Something the alert refers to is gone or broken: sending it cannot
    /// succeed, so the alert fails with this reason.
    #[error("{0}")]
    Unusable(String),
    /// The store failed; trying again later may work.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One sale of the alert, ready for the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSale {
    pub brand_id: String,
    pub context: SaleContext,
}

/// Sets of brands (with a subject) one alert keeps prepared renders for;
/// members beyond them get a full render each.
const PREPARED_CAPACITY: usize = 64;

/// An alert's shared content.
#[derive(Debug)]
pub struct AlertContent {
    pub alert_id: String,
    pub template: Arc<Template>,
    /// The brands of the alert's sales, each once, in the alert's order.
    pub brands: Vec<BrandContext>,
    /// The alert's sales, in the alert's order.
    pub sales: Vec<AlertSale>,
    /// Renders prepared for the members with the same matching brands, by
    /// subject and brand ids.
    prepared: Mutex<HashMap<PreparedKey, Arc<PreparedAlert>>>,
}

/// A prepared render's subject and brand ids.
type PreparedKey = (String, Vec<String>);

impl AlertContent {
    /// Loads the template, the sales and their brands of `alert`.
    pub async fn load(store: &Store, alert: &BrandAlert) -> Result<AlertContent, ContentError> {
        let catalog = store.catalog();
        let template = catalog
            .get_template(&alert.template_id)
            .await?
            .ok_or_else(|| {
                ContentError::Unusable(format!("template {} no longer exists", alert.template_id))
            })?;
        let template = Template::compile(&TemplateSource {
            subject: template.subject,
            html: template.html,
            text: template.text,
        })
        .map_err(|errors| {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ContentError::Unusable(format!(
                "template {} does not compile: {}",
                alert.template_id,
                errors.join("; ")
            ))
        })?;
        if alert.sale_ids.is_empty() {
            return Err(ContentError::Unusable("the alert has no sales".to_owned()));
        }
        let mut brands: Vec<BrandContext> = Vec::new();
        let mut sales = Vec::with_capacity(alert.sale_ids.len());
        for sale_id in &alert.sale_ids {
            let sale = catalog.get_sale(sale_id).await?.ok_or_else(|| {
                ContentError::Unusable(format!("sale {sale_id} no longer exists"))
            })?;
            let brand_id = sale.brand_id;
            let brand_name = match brands.iter().find(|b| b.id == brand_id) {
                Some(brand) => brand.name.clone(),
                None => {
                    let brand = catalog.get_brand(&brand_id).await?.ok_or_else(|| {
                        ContentError::Unusable(format!(
                            "brand {brand_id} of sale {sale_id} no longer exists"
                        ))
                    })?;
                    brands.push(BrandContext {
                        id: brand_id.clone(),
                        name: brand.name.clone(),
                    });
                    brand.name
                }
            };
            sales.push(AlertSale {
                brand_id,
                context: SaleContext {
                    brand: brand_name,
                    headline: sale.headline,
                    url: sale.url,
                    image: sale.image,
                    starts_at: rfc3339(sale.starts_at),
                    ends_at: sale.ends_at.map(rfc3339),
                },
            });
        }
        Ok(AlertContent::new(alert.id.clone(), template, brands, sales))
    }

    pub fn new(
        alert_id: String,
        template: Template,
        brands: Vec<BrandContext>,
        sales: Vec<AlertSale>,
    ) -> AlertContent {
        AlertContent {
            alert_id,
            template: Arc::new(template),
            brands,
            sales,
            prepared: Mutex::new(HashMap::new()),
        }
    }

    /// The render of the alert for members whose matching brands are
    /// `brand_ids`, prepared once per set of brands; `None` when no brand
    /// matches.
    pub fn prepared(
        &self,
        alert: &AlertContext,
        brand_ids: &[String],
    ) -> Option<Arc<PreparedAlert>> {
        let matching: Vec<String> = self
            .brands
            .iter()
            .filter(|b| brand_ids.contains(&b.id))
            .map(|b| b.id.clone())
            .collect();
        if matching.is_empty() {
            return None;
        }
        let key = (alert.subject.clone(), matching);
        if let Some(found) = self
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Some(found.clone());
        }
        let (brands, sales) = self.for_brands(&key.1);
        let prepared = Arc::new(PreparedAlert::new(
            self.template.clone(),
            alert.clone(),
            brands,
            sales,
        ));
        let mut cache = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() < PREPARED_CAPACITY {
            cache.insert(key, prepared.clone());
        }
        Some(prepared)
    }

    /// The alert's brand ids, each once, in the alert's order.
    pub fn brand_ids(&self) -> Vec<String> {
        self.brands.iter().map(|b| b.id.clone()).collect()
    }

    /// The brands and sales among `brand_ids` (a member's matching brands),
    /// in the alert's order; ids that are not the alert's are ignored.
    pub fn for_brands(&self, brand_ids: &[String]) -> (Vec<BrandContext>, Vec<SaleContext>) {
        let brands = self
            .brands
            .iter()
            .filter(|b| brand_ids.contains(&b.id))
            .cloned()
            .collect();
        let sales = self
            .sales
            .iter()
            .filter(|s| brand_ids.contains(&s.brand_id))
            .map(|s| s.context.clone())
            .collect();
        (brands, sales)
    }
}

/// A timestamp as RFC 3339 in UTC, to the second (what templates show).
pub fn rfc3339(at: Timestamp) -> String {
    let millis = u64::try_from(at.millis()).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}

/// Loaded alert contents by alert id, each kept for `ttl` (so an edited
/// template reaches the mailers soon) and at most `capacity` of them.
#[derive(Debug)]
pub struct ContentCache {
    entries: Mutex<HashMap<String, (Instant, Arc<AlertContent>)>>,
    capacity: usize,
    ttl: Duration,
}

impl ContentCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The alert's content, loaded if missing or stale.
    pub async fn get(
        &self,
        store: &Store,
        alert: &BrandAlert,
    ) -> Result<Arc<AlertContent>, ContentError> {
        if let Some(content) = self.fresh(&alert.id) {
            return Ok(content);
        }
        let content = Arc::new(AlertContent::load(store, alert).await?);
        self.insert(content.clone());
        Ok(content)
    }

    fn fresh(&self, alert_id: &str) -> Option<Arc<AlertContent>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(alert_id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, content)| content.clone())
    }

    fn insert(&self, content: Arc<AlertContent>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&content.alert_id) {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(content.alert_id.clone(), (Instant::now(), content));
    }

    /// Forgets an alert (its content changed or it ended).
    pub fn forget(&self, alert_id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(alert_id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(alert_id: &str) -> Arc<AlertContent> {
        let template = Template::compile(&TemplateSource {
            subject: "s".into(),
            html: "h".into(),
            text: None,
        })
        .unwrap();
        let sale = |brand: &str, headline: &str| AlertSale {
            brand_id: brand.into(),
            context: SaleContext {
                brand: brand.to_uppercase(),
                headline: headline.into(),
                url: "https://shop.example.com".into(),
                image: None,
                starts_at: rfc3339(Timestamp(0)),
                ends_at: None,
            },
        };
        Arc::new(AlertContent::new(
            alert_id.into(),
            template,
            ["acme", "globex", "initech"]
                .into_iter()
                .map(|id| BrandContext {
                    id: id.into(),
                    name: id.to_uppercase(),
                })
                .collect(),
            vec![
                sale("acme", "a1"),
                sale("globex", "g1"),
                sale("acme", "a2"),
                sale("initech", "i1"),
            ],
        ))
    }

    #[test]
    fn a_member_sees_the_sales_of_their_brands_in_alert_order() {
        let c = content("a");
        let wanted = [
            "initech".to_owned(),
            "acme".to_owned(),
            "unknown".to_owned(),
        ];
        let (brands, sales) = c.for_brands(&wanted);
        let names: Vec<_> = brands.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["ACME", "INITECH"]);
        let headlines: Vec<_> = sales.iter().map(|s| s.headline.as_str()).collect();
        assert_eq!(headlines, ["a1", "a2", "i1"]);
        assert_eq!(c.brand_ids(), ["acme", "globex", "initech"]);
        let (brands, sales) = c.for_brands(&[]);
        assert!(brands.is_empty() && sales.is_empty());
    }

    #[test]
    fn timestamps_format_as_rfc3339_seconds() {
        assert_eq!(
            rfc3339(Timestamp(1_704_067_200_999)),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(rfc3339(Timestamp(-5)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn the_cache_is_bounded_and_entries_expire() {
        let cache = ContentCache::new(2, Duration::from_secs(3600));
        for id in ["a", "b", "c"] {
            cache.insert(content(id));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.fresh("a").is_none(), "the oldest entry made room");
        assert!(cache.fresh("c").is_some());
        cache.forget("c");
        assert!(cache.fresh("c").is_none());

        let expiring = ContentCache::new(2, Duration::ZERO);
        expiring.insert(content("a"));
        assert!(expiring.fresh("a").is_none());
    }
}
