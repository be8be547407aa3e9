//! Process definitions from a folder: one `<name>.toml` or `<name>.json`
//! per process. On every start the files are written to the store and win
//! over what the API changed since; each such replacement is logged.

use std::path::{Path, PathBuf};

use herald_core::schedule::{DefinitionError, ProcessDefinition, ProcessSpec};
use herald_store::processes::DefinitionSource;
use herald_store::{Store, StoreError};

/// The process Herald ships: build the audiences of due brand alerts every
/// minute.
pub const DEFAULT_PROCESS: &str = include_str!("../processes/brand-alerts.toml");
pub const DEFAULT_PROCESS_NAME: &str = "brand-alerts";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: DefinitionError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses one definition file; the process is named after the file.
pub fn parse_file(path: &Path, text: &str) -> Result<ProcessDefinition, FileError> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let spec: ProcessSpec = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(text).map_err(|e| e.to_string()),
        _ => toml::from_str(text).map_err(|e| e.to_string()),
    }
    .map_err(|message| FileError::Parse {
        path: path.to_owned(),
        message,
    })?;
    ProcessDefinition::parse(name, spec).map_err(|source| FileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Every `.toml` and `.json` file of `folder`, parsed, by file name. A
/// missing folder holds none.
pub fn read_folder(folder: &Path) -> Result<Vec<ProcessDefinition>, FileError> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FileError::Read {
                path: folder.to_owned(),
                source,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml" | "json")
            )
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
                path: path.clone(),
                source,
            })?;
            parse_file(path, &text)
        })
        .collect()
}

/// Writes the shipped default process (unless the folder defines one of
/// the same name) and every file of `folder` to the store. Returns the
/// names written.
pub async fn load(store: &Store, folder: Option<&Path>) -> Result<Vec<String>, FileError> {
    let mut definitions = match folder {
        Some(folder) => read_folder(folder)?,
        None => Vec::new(),
    };
    if !definitions
        .iter()
        .any(|d| d.name.as_str() == DEFAULT_PROCESS_NAME)
    {
        let shipped = parse_file(
            Path::new(&format!("{DEFAULT_PROCESS_NAME}.toml")),
            DEFAULT_PROCESS,
        )?;
        if store.processes().get(DEFAULT_PROCESS_NAME).await?.is_none() {
            definitions.push(shipped);
        }
    }
    let mut names = Vec::new();
    for definition in definitions {
        let before = store.processes().get(definition.name.as_str()).await?;
        store
            .processes()
            .put(&definition, DefinitionSource::File)
            .await?;
        if let Some(before) = before.filter(|b| b.spec != definition.spec) {
            tracing::info!(process = %before.name, "the process file replaced the stored definition (the file wins on start)");
        }
        names.push(definition.name.to_string());
    }
    Ok(names)
}
