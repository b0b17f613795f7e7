//! From the request to a model: public names and aliases resolve to one configured model,
//! which names its pool. Rules on headers, tenants, prompt size and splits extend this table.

use std::collections::HashMap;

use crate::config::Model;

/// Public name or alias → index of the model in `Config::models`.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_name: HashMap<Box<str>, usize>,
}

impl RouteTable {
    /// Builds the table; config validation already guarantees names and aliases are unique.
    pub fn new(models: &[Model]) -> Self {
        let mut by_name = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            by_name.insert(m.name.as_str().into(), i);
            for alias in &m.aliases {
                by_name.insert(alias.as_str().into(), i);
            }
        }
        Self { by_name }
    }

    /// The model a request names, by public name or alias (case-sensitive, as OpenAI).
    pub fn resolve(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve_to_their_model_and_nothing_else() {
        let models = [
            Model {
                name: "llama".into(),
                aliases: vec!["fast".into()],
                pool: 0,
                fallback: vec![],
                first_token_timeout: std::time::Duration::from_secs(60),
                limits: Default::default(),
                default_max_tokens: 16,
                bytes_per_token: 4.0,
            },
            Model {
                name: "qwen".into(),
                aliases: vec![],
                pool: 1,
                fallback: vec![],
                first_token_timeout: std::time::Duration::from_secs(60),
                limits: Default::default(),
                default_max_tokens: 16,
                bytes_per_token: 4.0,
            },
        ];
        let t = RouteTable::new(&models);
        assert_eq!(t.resolve("fast"), Some(0));
        assert_eq!(t.resolve("llama"), Some(0));
        assert_eq!(t.resolve("qwen"), Some(1));
        assert_eq!(t.resolve("Qwen"), None);
        assert_eq!(t.resolve(""), None);
    }
}
