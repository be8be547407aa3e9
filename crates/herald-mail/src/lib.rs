//! Herald's outbound mail: templates (minijinja), rendering with inlined CSS
//! and a text part, signed one-click unsubscribe tokens, the MIME message,
//! and the transports that deliver it (outbox folder, SMTP, SendGrid,
//! SparkPost).
#![forbid(unsafe_code)]

pub mod message;
mod mime;
pub mod prepared;
pub mod render;
pub mod template;
pub mod transport;
pub mod unsubscribe;

pub use lettre::message::Mailbox;
pub use message::{ListUnsubscribe, MessageError, OutgoingEmail};
pub use prepared::PreparedAlert;
pub use render::{
    AlertContext, BrandContext, MemberContext, RenderContext, RenderError, RenderedEmail,
    SaleContext,
};
pub use template::{validate, Template, TemplateError, TemplatePart, TemplateSource};
pub use transport::{BuildError, SendError, SendReceipt, Transport, TransportConfig};
pub use unsubscribe::{UnsubscribeClaim, UnsubscribeError, UnsubscribeSigner};
