//! Building one member's email of an alert: the render context, the
//! unsubscribe link and headers, the custom args provider events are
//! matched back by, and a Message-ID that stays the same on a resend. Also
//! the API's preview and test send.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::Clock;
use herald_mail::{
    AlertContext, ListUnsubscribe, Mailbox, MemberContext, MessageError, OutgoingEmail,
    RenderContext, RenderError, RenderedEmail, Transport, UnsubscribeError, UnsubscribeSigner,
};
use herald_store::brand_alerts::BrandAlert;
use herald_store::{Store, StoreError};

use crate::content::{AlertContent, ContentCache, ContentError};
use crate::settings::{MailerSettings, SettingsError, ALERT_ID_ARG, MEMBER_ID_ARG};
use crate::transports::Transports;

/// Alerts whose content one composer keeps loaded.
const CONTENT_CACHE_CAPACITY: usize = 64;
/// How long loaded content is used before it is read again.
const CONTENT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most addresses one test send goes to.
pub const MAX_TEST_ADDRESSES: usize = 10;
/// Put before the subject of a test send.
pub const TEST_SUBJECT_PREFIX: &str = "[Test] ";
/// The member id test sends' unsubscribe links and custom args carry.
pub const TEST_MEMBER_ID: &str = "test-send";

/// The member fields an email uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub member_id: String,
    pub email: String,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    /// The key provider events are routed by; the member id when `None`.
    pub customer_id: Option<String>,
}

/// Why one member's email could not be built; it goes to the dead-letter
/// queue with this reason.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("rendering failed: {0}")]
    Render(#[from] RenderError),
    #[error("member address {address:?} cannot be used: {message}")]
    BadAddress { address: String, message: String },
    #[error("unsubscribe link: {0}")]
    Unsubscribe(#[from] UnsubscribeError),
    #[error("invalid message: {0}")]
    Message(#[from] MessageError),
    #[error("none of the member's brands {0:?} is a brand of the alert")]
    NoMatchingBrand(Vec<String>),
}

/// Why a preview or test send could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("brand alert {0} not found")]
    AlertNotFound(String),
    #[error("member {0} not found")]
    MemberNotFound(String),
    #[error("{0}")]
    Content(String),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error("transport {0:?} is not configured")]
    UnknownTransport(String),
    #[error("a test send needs 1 to {MAX_TEST_ADDRESSES} addresses, got {0}")]
    AddressCount(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ContentError> for PreviewError {
    fn from(e: ContentError) -> Self {
        match e {
            ContentError::Unusable(reason) => PreviewError::Content(reason),
            ContentError::Store(e) => PreviewError::Store(e),
        }
    }
}

/// The outcome of a test send to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSendOutcome {
    pub address: String,
    /// The provider's message id, or why the send failed.
    pub result: Result<Option<String>, String>,
}

/// Builds emails for alerts; shared by the mailer and the API.
pub struct Composer {
    store: Store,
    transports: Arc<Transports>,
    signer: UnsubscribeSigner,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    message_id_domain: String,
    unsubscribe_base: String,
    customer_key: String,
    contents: ContentCache,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Composer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composer")
            .field("from", &self.from)
            .field("unsubscribe_base", &self.unsubscribe_base)
            .field("transports", &self.transports)
            .finish_non_exhaustive()
    }
}

impl Composer {
    /// `signing_key` signs unsubscribe tokens (at least 32 bytes; see
    /// [`crate::settings::load_or_create_key`]).
    pub fn new(
        store: Store,
        transports: Arc<Transports>,
        settings: &MailerSettings,
        signing_key: &[u8],
        clock: Arc<dyn Clock>,
    ) -> Result<Composer, SettingsError> {
        settings.validate()?;
        let signer = UnsubscribeSigner::new(signing_key)
            .map_err(|e| SettingsError::new("mailer.unsubscribe_key", e.to_string()))?;
        Ok(Composer {
            store,
            transports,
            signer,
            from: settings.from.mailbox()?,
            reply_to: settings.reply_to_mailbox()?,
            message_id_domain: settings.message_id_domain.clone(),
            unsubscribe_base: format!("{}/unsubscribe", settings.public_url.trim_end_matches('/')),
            customer_key: settings.customer_key.clone(),
            contents: ContentCache::new(CONTENT_CACHE_CAPACITY, CONTENT_CACHE_TTL),
            clock,
        })
    }

    /// Verifies the tokens of unsubscribe links this composer minted.
    pub fn signer(&self) -> &UnsubscribeSigner {
        &self.signer
    }

    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// The alert's template, sales and brands, cached per alert.
    pub async fn content(&self, alert: &BrandAlert) -> Result<Arc<AlertContent>, ContentError> {
        self.contents.get(&self.store, alert).await
    }

    /// Drops an alert's cached content.
    pub fn forget(&self, alert_id: &str) {
        self.contents.forget(alert_id);
    }

    /// The transport the alert names (or the default), with its name.
    pub fn transport(&self, alert: &BrandAlert) -> Option<(String, Arc<dyn Transport>)> {
        self.transports
            .get(alert.transport.as_deref())
            .map(|(name, t)| (name.to_owned(), t.clone()))
    }

    /// The email of `alert` for one member whose matching brands are
    /// `brand_ids`.
    pub fn compose(
        &self,
        alert: &BrandAlert,
        content: &AlertContent,
        recipient: &Recipient,
        brand_ids: &[String],
    ) -> Result<OutgoingEmail, ComposeError> {
        let alert_context = AlertContext {
            id: alert.id.clone(),
            subject: alert.subject.clone(),
        };
        let prepared = content
            .prepared(&alert_context, brand_ids)
            .ok_or_else(|| ComposeError::NoMatchingBrand(brand_ids.to_vec()))?;
        let unsubscribe_url =
            self.signer
                .url(&self.unsubscribe_base, &alert.id, &recipient.member_id)?;
        let member = MemberContext {
            first_name: recipient.first_name.clone(),
            name: recipient.name.clone(),
            email: recipient.email.clone(),
            locale: recipient.locale.clone(),
            time_zone: recipient.time_zone.clone(),
        };
        let rendered = prepared.render(&member, &unsubscribe_url)?;
        let to = mailbox(recipient.name.clone(), &recipient.email)?;
        let customer = recipient
            .customer_id
            .clone()
            .unwrap_or_else(|| recipient.member_id.clone());
        let email = OutgoingEmail {
            from: self.from.clone(),
            to,
            reply_to: self.reply_to.clone(),
            subject: rendered.subject,
            html: rendered.html,
            text: rendered.text,
            list_unsubscribe: Some(ListUnsubscribe {
                url: unsubscribe_url,
                mailto: None,
            }),
            custom_args: BTreeMap::from([
                (ALERT_ID_ARG.to_owned(), alert.id.clone()),
                (MEMBER_ID_ARG.to_owned(), recipient.member_id.clone()),
                (self.customer_key.clone(), customer),
            ]),
            message_id: OutgoingEmail::message_id_for(
                &alert.id,
                &recipient.member_id,
                &self.message_id_domain,
            ),
        };
        email.check()?;
        Ok(email)
    }

    /// The email one member would get, rendered (for the API's preview).
    pub async fn preview(
        &self,
        alert_id: &str,
        member_id: &str,
    ) -> Result<RenderedEmail, PreviewError> {
        let alert = self.alert(alert_id).await?;
        let member = self
            .store
            .members()
            .get(member_id)
            .await?
            .ok_or_else(|| PreviewError::MemberNotFound(member_id.to_owned()))?;
        let recipient = Recipient::from(&member);
        let content = self.content(&alert).await?;
        let brand_ids = self.matching_brands(&alert, &content, member_id).await?;
        let email = self.compose(&alert, &content, &recipient, &brand_ids)?;
        Ok(RenderedEmail {
            subject: email.subject,
            html: email.html,
            text: email.text,
        })
    }

    /// The member's brands among the alert's, by the member's affinities;
    /// every brand of the alert when none reaches the threshold (a preview
    /// for a member outside the audience still shows the whole alert).
    async fn matching_brands(
        &self,
        alert: &BrandAlert,
        content: &AlertContent,
        member_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let affinities = self.store.members().affinities(member_id).await?;
        let matching: Vec<String> = content
            .brand_ids()
            .into_iter()
            .filter(|brand| {
                affinities
                    .iter()
                    .any(|a| a.brand_id == *brand && a.score >= alert.affinity_threshold)
            })
            .collect();
        Ok(if matching.is_empty() {
            content.brand_ids()
        } else {
            matching
        })
    }

    /// Sends the alert to each address through its transport, rendered
    /// with example member data and every brand of the alert, the subject
    /// prefixed with [`TEST_SUBJECT_PREFIX`]. Test sends write nothing to
    /// the send log and carry no `alert_id` custom arg, so provider events
    /// about them stay out of the alert's statistics.
    pub async fn test_send(
        &self,
        alert_id: &str,
        addresses: &[String],
    ) -> Result<Vec<TestSendOutcome>, PreviewError> {
        if addresses.is_empty() || addresses.len() > MAX_TEST_ADDRESSES {
            return Err(PreviewError::AddressCount(addresses.len()));
        }
        let alert = self.alert(alert_id).await?;
        let content = self.content(&alert).await?;
        let (_, transport) = self.transport(&alert).ok_or_else(|| {
            PreviewError::UnknownTransport(alert.transport.clone().unwrap_or_default())
        })?;
        let mut outcomes = Vec::with_capacity(addresses.len());
        for address in addresses {
            let result = match self.test_email(&alert, &content, address) {
                Ok(email) => transport
                    .send(&email)
                    .await
                    .map(|receipt| receipt.provider_message_id)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            outcomes.push(TestSendOutcome {
                address: address.clone(),
                result,
            });
        }
        Ok(outcomes)
    }

    fn test_email(
        &self,
        alert: &BrandAlert,
        content: &AlertContent,
        address: &str,
    ) -> Result<OutgoingEmail, ComposeError> {
        let example = RenderContext::example();
        let unsubscribe_url = self
            .signer
            .url(&self.unsubscribe_base, &alert.id, TEST_MEMBER_ID)?;
        let (brands, sales) = content.for_brands(&content.brand_ids());
        let context = RenderContext {
            member: MemberContext {
                email: address.to_owned(),
                ..example.member
            },
            alert: AlertContext {
                id: alert.id.clone(),
                subject: alert.subject.clone(),
            },
            brands,
            sales,
            unsubscribe_url: unsubscribe_url.clone(),
        };
        let rendered = content.template.render(&context)?;
        let email = OutgoingEmail {
            from: self.from.clone(),
            to: mailbox(None, address)?,
            reply_to: self.reply_to.clone(),
            subject: format!("{TEST_SUBJECT_PREFIX}{}", rendered.subject),
            html: rendered.html,
            text: rendered.text,
            list_unsubscribe: Some(ListUnsubscribe {
                url: unsubscribe_url,
                mailto: None,
            }),
            custom_args: BTreeMap::from([("test_send".to_owned(), alert.id.clone())]),
            message_id: format!(
                "test.{}.{}@{}",
                self.clock.now().millis(),
                uuid::Uuid::new_v4().simple(),
                self.message_id_domain
            ),
        };
        email.check()?;
        Ok(email)
    }

    async fn alert(&self, alert_id: &str) -> Result<BrandAlert, PreviewError> {
        self.store
            .brand_alerts()
            .get(alert_id)
            .await?
            .ok_or_else(|| PreviewError::AlertNotFound(alert_id.to_owned()))
    }
}

fn mailbox(name: Option<String>, address: &str) -> Result<Mailbox, ComposeError> {
    let parsed = address.parse().map_err(|e| ComposeError::BadAddress {
        address: address.to_owned(),
        message: format!("{e}"),
    })?;
    Ok(Mailbox::new(name, parsed))
}
