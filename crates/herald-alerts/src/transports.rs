//! The configured transports by name, and which one an alert uses.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use herald_mail::{Transport, TransportConfig};

use crate::settings::{default_transports, SettingsError};

/// Every configured transport, built once at start.
#[derive(Debug, Clone)]
pub struct Transports {
    by_name: BTreeMap<String, Arc<dyn Transport>>,
    default: String,
}

impl Transports {
    /// Builds the `[transports.<name>]` sections; an empty map means one
    /// `outbox` transport writing to `<data_dir>/outbox`. `default` must
    /// name one of them.
    pub fn build(
        configs: &BTreeMap<String, TransportConfig>,
        default: &str,
        data_dir: &Path,
    ) -> Result<Transports, SettingsError> {
        let defaults;
        let configs = if configs.is_empty() {
            defaults = default_transports(data_dir);
            &defaults
        } else {
            configs
        };
        let mut by_name = BTreeMap::new();
        for (name, config) in configs {
            check_name(name)?;
            let transport = config
                .build()
                .map_err(|e| SettingsError::new(format!("transports.{name}"), e.to_string()))?;
            by_name.insert(name.clone(), transport);
        }
        Self::from_transports(by_name, default)
    }

    /// Transports built elsewhere (tests, embedding applications).
    pub fn from_transports(
        by_name: BTreeMap<String, Arc<dyn Transport>>,
        default: &str,
    ) -> Result<Transports, SettingsError> {
        if !by_name.contains_key(default) {
            let known: Vec<&str> = by_name.keys().map(String::as_str).collect();
            return Err(SettingsError::new(
                "mailer.default_transport",
                format!(
                    "{default:?} is not a configured transport; configured: {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(Transports {
            by_name,
            default: default.to_owned(),
        })
    }

    /// The transport an alert names, or the default for `None`.
    pub fn get(&self, name: Option<&str>) -> Option<(&str, &Arc<dyn Transport>)> {
        let name = name.unwrap_or(&self.default);
        self.by_name
            .get_key_value(name)
            .map(|(name, transport)| (name.as_str(), transport))
    }

    /// Whether `name` is configured; the API checks an alert's transport
    /// with it.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }
}

fn check_name(name: &str) -> Result<(), SettingsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SettingsError::new(
            format!("transports.{name}"),
            "a transport name is 1-64 letters, digits, '-' or '_'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_sections_give_the_outbox_under_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let transports = Transports::build(&BTreeMap::new(), "outbox", dir.path()).unwrap();
        let (name, transport) = transports.get(None).unwrap();
        assert_eq!(name, "outbox");
        assert_eq!(transport.kind(), "outbox");
        assert!(dir.path().join("outbox").is_dir());
        assert!(transports.get(Some("smtp")).is_none());
        assert_eq!(transports.names().collect::<Vec<_>>(), vec!["outbox"]);
    }

    #[test]
    fn named_transports_are_built_and_the_default_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let configs: BTreeMap<String, TransportConfig> = toml::from_str(&format!(
            "[files]\nkind = \"outbox\"\ndir = {:?}\n[sg]\nkind = \"sendgrid\"\napi_key = \"SG.k\"\n",
            dir.path().join("files").display().to_string()
        ))
        .unwrap();
        let transports = Transports::build(&configs, "sg", dir.path()).unwrap();
        assert_eq!(transports.get(None).unwrap().1.kind(), "sendgrid");
        assert_eq!(transports.get(Some("files")).unwrap().1.kind(), "outbox");
        assert!(transports.contains("files"));
        assert!(!transports.contains("outbox"));

        let err = Transports::build(&configs, "outbox", dir.path()).unwrap_err();
        assert_eq!(err.key, "mailer.default_transport");
        assert!(err.message.contains("files, sg"), "{err}");
    }

    #[test]
    fn bad_sections_name_the_transport() {
        let dir = tempfile::tempdir().unwrap();
        let configs: BTreeMap<String, TransportConfig> =
            toml::from_str("[sg]\nkind = \"sendgrid\"\napi_key = \"\"\n").unwrap();
        let err = Transports::build(&configs, "sg", dir.path()).unwrap_err();
        assert_eq!(err.key, "transports.sg");
        assert!(err.message.contains("api_key"), "{err}");

        let configs: BTreeMap<String, TransportConfig> =
            toml::from_str("[\"bad name\"]\nkind = \"sendgrid\"\napi_key = \"k\"\n").unwrap();
        let err = Transports::build(&configs, "bad name", dir.path()).unwrap_err();
        assert_eq!(err.key, "transports.bad name");
    }
}
