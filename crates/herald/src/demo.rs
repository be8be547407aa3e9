//! Demo data: a small fashion retailer's catalog, a few thousand members
//! with brand affinities, and a brand alert due a minute from now, so a new
//! user sees the whole outbound pipeline work (the emails land in the
//! outbox folder) without preparing anything.
//!
//! The data is generated from a fixed seed, so every run produces the same
//! members; seeding twice updates them in place and adds one more alert.

use std::time::Duration;

use anyhow::Context;
use herald_core::alert::AlertAction;
use herald_core::catalog::{
    AffinityScore, BrandId, EmailAddress, EmailType, Locale, MemberId, MemberStatus, Source,
    SuppressionReason, TimeZone,
};
use herald_core::{Clock, SystemClock, Timestamp};
use herald_store::brand_alerts::NewBrandAlert;
use herald_store::catalog::{NewSale, NewTemplate};
use herald_store::members::{AffinityInput, MemberInput, SubscriptionInput};
use herald_store::Store;

/// `(id, display name)` of every demo brand.
const BRANDS: [(&str, &str); 12] = [
    ("northwind", "Northwind Outfitters"),
    ("fjord", "Fjord Footwear"),
    ("atlas-denim", "Atlas Denim"),
    ("lumen", "Lumen & Co"),
    ("verde-home", "Verde Home"),
    ("pico-kids", "Pico Kids"),
    ("solstice", "Solstice Swim"),
    ("marlow", "Marlow Leather"),
    ("kestrel", "Kestrel Sport"),
    ("ember", "Ember Kitchen"),
    ("tidal", "Tidal Eyewear"),
    ("orchard", "Orchard Beauty"),
];

/// The brands the demo alert announces, with their sale headlines.
const ON_SALE: [(&str, &str); 3] = [
    (
        "northwind",
        "Northwind Outfitters: 40% off outerwear this weekend",
    ),
    ("fjord", "Fjord Footwear: the winter boots sale"),
    ("atlas-denim", "Atlas Denim: buy one, get one half price"),
];

const FIRST_NAMES: [&str; 16] = [
    "Ada", "Ben", "Chloé", "Dev", "Elif", "Finn", "Grace", "Hugo", "Ines", "Jonas", "Kofi", "Lena",
    "Mateo", "Noor", "Oskar", "Priya",
];
const LAST_NAMES: [&str; 12] = [
    "Lovelace", "Okafor", "Martin", "Sharma", "Yilmaz", "Berg", "Hopper", "Dubois", "Costa",
    "Weber", "Mensah", "Tanaka",
];
const PLACES: [(&str, &str); 6] = [
    ("en-GB", "Europe/London"),
    ("fr-FR", "Europe/Paris"),
    ("de-DE", "Europe/Berlin"),
    ("en-US", "America/New_York"),
    ("es-ES", "Europe/Madrid"),
    ("en-US", "America/Los_Angeles"),
];

pub const DEMO_TEMPLATE_NAME: &str = "demo-brand-alert";

pub const DEMO_TEMPLATE_HTML: &str = r#"<!doctype html>
<html>
<head>
<style>
  body { margin: 0; background: #f4f1ec; font-family: Helvetica, Arial, sans-serif; color: #222; }
  .wrap { max-width: 600px; margin: 0 auto; background: #ffffff; }
  .head { background: #1f3a5f; color: #ffffff; padding: 24px; font-size: 22px; }
  .sale { padding: 20px 24px; border-bottom: 1px solid #eee; }
  .sale h2 { margin: 0 0 8px; font-size: 18px; color: #1f3a5f; }
  .button { display: inline-block; background: #e4572e; color: #ffffff; padding: 10px 18px; text-decoration: none; border-radius: 4px; }
  .foot { padding: 16px 24px; font-size: 12px; color: #777; }
</style>
</head>
<body>
<div class="wrap">
  <div class="head">Hello {{ member.first_name | default("there") }}, your brands are on sale</div>
  {% for sale in sales %}
  <div class="sale">
    <h2>{{ sale.headline }}</h2>
    <p>{{ sale.brand }} &middot; from {{ sale.starts_at }}{% if sale.ends_at %} until {{ sale.ends_at }}{% endif %}</p>
    <a class="button" href="{{ sale.url }}">Shop {{ sale.brand }}</a>
  </div>
  {% endfor %}
  <div class="foot">
    You get this email because you follow {% for brand in brands %}{{ brand.name }}{% if not loop.last %}, {% endif %}{% endfor %}.
    <a href="{{ unsubscribe_url }}">Unsubscribe from brand alerts</a>.
  </div>
</div>
</body>
</html>
"#;

/// What `seed` created, for the command's output.
#[derive(Debug)]
pub struct DemoSummary {
    pub brands: usize,
    pub members: usize,
    pub affinities: usize,
    pub unsubscribed: usize,
    pub suppressed: usize,
    pub alert_id: String,
    pub send_at: Timestamp,
}

/// A small deterministic generator (SplitMix64), so the demo data is the
/// same on every machine.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Loads the demo catalog and `members` members, and schedules an alert
/// `send_in` from now.
pub async fn seed(store: &Store, members: usize, send_in: Duration) -> anyhow::Result<DemoSummary> {
    let catalog = store.catalog();
    for (id, name) in BRANDS {
        catalog.upsert_brand(&BrandId::parse(id)?, name).await?;
    }

    let now = SystemClock.now();
    let send_at = now.plus(send_in);
    let mut sale_ids = Vec::new();
    for (brand, headline) in ON_SALE {
        let sale = catalog
            .create_sale(&NewSale {
                brand_id: BrandId::parse(brand)?,
                headline: headline.to_owned(),
                url: herald_core::catalog::HttpUrl::parse(&format!(
                    "https://shop.example.com/sales/{brand}"
                ))?,
                image: Some(herald_core::catalog::HttpUrl::parse(&format!(
                    "https://shop.example.com/img/{brand}.jpg"
                ))?),
                starts_at: send_at,
                ends_at: Some(send_at.plus(Duration::from_secs(3 * 24 * 3600))),
            })
            .await?;
        sale_ids.push(sale.id);
    }

    let template_id = demo_template(store).await?;

    let mut dice = Dice(0x4845_5241_4c44);
    let brand_alerts = EmailType::parse("brand_alerts")?;
    let source = Source::parse("demo")?;
    let mut summary = DemoSummary {
        brands: BRANDS.len(),
        members,
        affinities: 0,
        unsubscribed: 0,
        suppressed: 0,
        alert_id: String::new(),
        send_at,
    };
    const BATCH: usize = 500;
    let mut start = 0;
    while start < members {
        let end = (start + BATCH).min(members);
        let mut batch = Vec::with_capacity(end - start);
        let mut affinities = Vec::new();
        let mut subscriptions = Vec::new();
        let mut suppress = Vec::new();
        for n in start..end {
            let first = FIRST_NAMES[dice.below(FIRST_NAMES.len())];
            let last = LAST_NAMES[dice.below(LAST_NAMES.len())];
            let (locale, zone) = PLACES[dice.below(PLACES.len())];
            let id = MemberId::parse(&format!("m{:05}", n + 1))?;
            let email = format!(
                "{}.{}{}@example.com",
                ascii_lower(first),
                ascii_lower(last),
                n + 1
            );
            batch.push(MemberInput {
                id: id.clone(),
                email: EmailAddress::parse(&email)?,
                name: Some(format!("{first} {last}")),
                first_name: Some(first.to_owned()),
                locale: Some(Locale::parse(locale)?),
                time_zone: Some(TimeZone::parse(zone)?),
                status: MemberStatus::Active,
                customer_id: None,
            });
            // Each member follows 1 to 4 brands; scores lean high for the
            // first one, as a favourite brand would.
            let follows = 1 + dice.below(4);
            let mut seen = Vec::with_capacity(follows);
            for k in 0..follows {
                let (brand, _) = BRANDS[dice.below(BRANDS.len())];
                if seen.contains(&brand) {
                    continue;
                }
                seen.push(brand);
                let score = if k == 0 {
                    0.5 + dice.unit() / 2.0
                } else {
                    dice.unit()
                };
                affinities.push(AffinityInput {
                    member_id: id.clone(),
                    brand_id: BrandId::parse(brand)?,
                    score: AffinityScore::new((score * 100.0).round() / 100.0)?,
                });
            }
            match dice.below(100) {
                0..=7 => subscriptions.push(SubscriptionInput {
                    member_id: id.clone(),
                    email_type: brand_alerts.clone(),
                    subscribed: false,
                    source: source.clone(),
                }),
                8..=9 => suppress.push(email),
                _ => {}
            }
        }
        store.members().upsert_batch(&batch).await?;
        summary.affinities += affinities.len();
        store.members().set_affinities_batch(&affinities).await?;
        summary.unsubscribed += subscriptions.len();
        store
            .members()
            .set_subscriptions_batch(&subscriptions)
            .await?;
        for address in &suppress {
            store
                .members()
                .suppress(
                    address,
                    SuppressionReason::HardBounce,
                    "demo",
                    Some("demo data"),
                )
                .await?;
        }
        summary.suppressed += suppress.len();
        start = end;
    }

    let alert = store
        .brand_alerts()
        .create(&NewBrandAlert {
            name: "Demo: weekend sale".to_owned(),
            subject: "Northwind, Fjord and Atlas Denim are on sale".to_owned(),
            template_id,
            send_at,
            affinity_threshold: 0.6,
            transport: None,
            sale_ids,
        })
        .await?;
    store
        .brand_alerts()
        .apply(&alert.id, AlertAction::Schedule, None)
        .await
        .context("scheduling the demo alert")?;
    summary.alert_id = alert.id;
    Ok(summary)
}

/// The demo template's id, creating it on first use.
async fn demo_template(store: &Store) -> anyhow::Result<String> {
    let catalog = store.catalog();
    let mut page = herald_store::page::PageRequest::first(herald_store::page::MAX_PAGE_SIZE);
    loop {
        let templates = catalog.list_templates(&page).await?;
        if let Some(found) = templates
            .items
            .iter()
            .find(|t| t.name == DEMO_TEMPLATE_NAME)
        {
            return Ok(found.id.clone());
        }
        match templates.next_cursor {
            Some(cursor) => page.after = Some(cursor),
            None => break,
        }
    }
    let created = catalog
        .create_template(&NewTemplate {
            name: DEMO_TEMPLATE_NAME.to_owned(),
            subject: "{{ alert.subject }}".to_owned(),
            html: DEMO_TEMPLATE_HTML.to_owned(),
            text: None,
        })
        .await?;
    Ok(created.id)
}

fn ascii_lower(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'é' => 'e',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_template_passes_validation() {
        herald_mail::validate(&herald_mail::TemplateSource {
            subject: "{{ alert.subject }}".to_owned(),
            html: DEMO_TEMPLATE_HTML.to_owned(),
            text: None,
        })
        .expect("the demo template is valid");
    }

    #[test]
    fn dice_is_deterministic() {
        let mut a = Dice(1);
        let mut b = Dice(1);
        assert_eq!(
            (0..5).map(|_| a.next()).collect::<Vec<_>>(),
            (0..5).map(|_| b.next()).collect::<Vec<_>>()
        );
        let unit = Dice(9).unit();
        assert!((0.0..1.0).contains(&unit));
    }
}
