//! The default transport: each message becomes an `.eml` file in a folder,
//! so a new user sees real emails (open them in any mail client) without
//! configuring a provider.

use std::path::{Path, PathBuf};

use crate::message::OutgoingEmail;

use super::{BuildError, SendError, SendReceipt, Transport};

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Folder the `.eml` files are written to; created if missing.
    pub dir: PathBuf,
}

#[derive(Debug)]
pub struct OutboxTransport {
    dir: PathBuf,
}

impl OutboxTransport {
    pub fn new(config: &OutboxConfig) -> Result<Self, BuildError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| BuildError::Outbox {
            path: config.dir.clone(),
            source,
        })?;
        Ok(Self {
            dir: config.dir.clone(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Named after the Message-ID, which is stable per alert and member, so
    /// sending the same email twice leaves one file.
    fn path_for(&self, email: &OutgoingEmail) -> PathBuf {
        let name: String = email
            .message_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{name}.eml"))
    }
}

#[async_trait::async_trait]
impl Transport for OutboxTransport {
    fn kind(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, email: &OutgoingEmail) -> Result<SendReceipt, SendError> {
        let bytes = email.formatted()?;
        let path = self.path_for(email);
        // Write then rename, so a reader never sees half a message.
        let tmp = self
            .dir
            .join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let io = |what: &str, err: std::io::Error| {
            SendError::transient(format!("outbox {what} {}: {err}", path.display()))
        };
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| io("cannot write", e))?;
        if let Err(err) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io("cannot rename into", err));
        }
        Ok(SendReceipt {
            provider_message_id: Some(path.display().to_string()),
        })
    }
}
