//! Reading a config file: YAML into the file's shape (every unknown field reported, not only
//! the first), then validation into a [`Config`].

use std::path::Path;

use super::{file, validate, Config, ConfigError};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", join(.0))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    /// Every error, one per entry (the `Io` case yields one without a path).
    pub fn errors(&self) -> Vec<ConfigError> {
        match self {
            Self::Io { .. } => vec![ConfigError {
                path: String::new(),
                message: self.to_string(),
            }],
            Self::Invalid(errs) => errs.clone(),
        }
    }
}

fn join(errs: &[ConfigError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(LoadError::Invalid)
}

/// Parses and validates YAML text. Every unknown field is reported (each is taken out and the
/// document read again), then what validation finds in the rest.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut unknown = Vec::new();
    let mut doc: Option<serde_yaml::Value> = None;
    let mut current = std::borrow::Cow::Borrowed(text);
    let file = loop {
        match serde_yaml::from_str::<file::FileConfig>(&current) {
            Ok(file) => break file,
            Err(e) => {
                let err = yaml_error(&e);
                let field = unknown_field(&err.message).map(str::to_owned);
                unknown.push(err);
                let Some(field) = field.filter(|_| unknown.len() < 100) else {
                    return Err(unknown);
                };
                let value = match &mut doc {
                    Some(v) => v,
                    None => doc.insert(serde_yaml::from_str(text).map_err(|_| unknown.clone())?),
                };
                let path = unknown.last().map_or("", |e| e.path.as_str());
                if !remove_field(value, path, &field) {
                    return Err(unknown);
                }
                current = serde_yaml::to_string(value)
                    .map_err(|_| unknown.clone())?
                    .into();
            }
        }
    };
    match validate::validate(file) {
        Ok(config) if unknown.is_empty() => Ok(config),
        Ok(_) => Err(unknown),
        Err(errs) => {
            unknown.extend(errs);
            Err(unknown)
        }
    }
}

/// A serde_yaml error as a config error: serde_yaml prefixes the message with the YAML path
/// (`pools.x.servers[0]: unknown field ...`) when the error is below the document root.
fn yaml_error(e: &serde_yaml::Error) -> ConfigError {
    let message = e.to_string();
    let (path, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_owned(), rest.to_owned()),
        _ => (String::new(), message),
    };
    ConfigError { path, message }
}

/// The field an "unknown field `x`, expected ..." message names.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split_once('`')
        .map(|(name, _)| name)
}

/// Takes `field` out of the mapping at `path` (`a.b[2].c`, where names may hold dots) in
/// `doc`; false if it is not there.
fn remove_field(doc: &mut serde_yaml::Value, path: &str, field: &str) -> bool {
    let mut at = doc;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let Some((index, after)) = inner.split_once(']') else {
                return false;
            };
            let Some(next) = index.parse::<usize>().ok().and_then(|i| at.get_mut(i)) else {
                return false;
            };
            at = next;
            rest = after.strip_prefix('.').unwrap_or(after);
            continue;
        }
        // The longest key that the path goes on from.
        let key = at.as_mapping().and_then(|m| {
            m.keys()
                .filter_map(serde_yaml::Value::as_str)
                .filter(|k| {
                    rest.strip_prefix(k)
                        .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
                })
                .max_by_key(|k| k.len())
                .map(str::to_owned)
        });
        let Some(key) = key else {
            return false;
        };
        let Some(next) = at.get_mut(key.as_str()) else {
            return false;
        };
        at = next;
        rest = &rest[key.len()..];
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    at.as_mapping_mut()
        .is_some_and(|m| m.remove(field).is_some())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, SAMPLE};

    #[test]
    fn unknown_field_is_an_error_at_its_parent_path() {
        let yaml = SAMPLE.replace("weight: 2", "weight: 2\n        wieght: 3");
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("pools.llama-8b.servers[0]: unknown field `wieght`"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_unknown_field_is_reported_with_the_other_errors() {
        let yaml = SAMPLE
            .replace("weight: 2", "weight: 2\n        wieght: 3")
            .replace("aliases: [smart]", "aliases: [smart]\n    aliasses: [x]")
            .replace(
                "engine: vllm\n    servers:\n      - url: http://127.0.0.1:8003",
                "engine: vlm\n    servers:\n      - url: http://127.0.0.1:8003",
            )
            + "lissen: 1\n";
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].starts_with("pools.llama-8b.servers[0]: unknown field `wieght`"),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("models.qwen-2.5-72b: unknown field `aliasses`")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("unknown field `lissen`")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("pools.qwen-72b.engine")),
            "{errs:?}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let yaml = SAMPLE.replace("weight: 2", "weight: heavy");
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("pools.llama-8b.servers[0].weight: invalid type"),
            "{errs:?}"
        );
    }
}
