//! A request's own routing preferences, OpenRouter-style: body `models` (an ordered list of
//! fallback models), `provider.sort` and `provider.max_price` ($/Mtok), and a time-to-first-
//! token target (header `x-switchyard-max-ttft-ms` or body `max_ttft_ms`). The gateway reads
//! them and strips them from the body it forwards. Parsing allocates only when they are
//! present.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::cost::Cost;
use super::spec::Sort;
use super::{Chain, Refusal};

/// The header carrying a TTFT target in milliseconds.
pub const MAX_TTFT_HEADER: &str = "x-switchyard-max-ttft-ms";

/// What the request asks of the router.
#[derive(Debug, Clone, Default)]
pub struct Prefs {
    /// Models to fall back to, in order, after the requested one (indices).
    pub models: Vec<usize>,
    /// Overrides the `prefer` of a candidate rule.
    pub sort: Option<Sort>,
    /// Pools pricier than this (either price) are not used.
    pub max_price: Option<Cost>,
    /// Candidates predicted slower than this to the first token are passed over.
    pub max_ttft_ms: Option<f64>,
}

#[derive(Deserialize)]
struct Provider<'a> {
    #[serde(borrow)]
    sort: Option<Cow<'a, str>>,
    max_price: Option<MaxPrice>,
}

#[derive(Deserialize)]
struct MaxPrice {
    prompt: Option<f64>,
    completion: Option<f64>,
}

impl Prefs {
    /// Reads the preferences; `resolve` turns a model name into an index the caller may use
    /// (unknown and not allowed alike are `None`).
    pub fn parse(
        models: Option<&RawValue>,
        provider: Option<&RawValue>,
        max_ttft_body: Option<&RawValue>,
        max_ttft_header: Option<&http::HeaderValue>,
        resolve: impl Fn(&str) -> Option<usize>,
    ) -> Result<Self, Refusal> {
        let mut prefs = Self::default();
        if let Some(raw) = models.filter(|r| r.get() != "null") {
            let names: Vec<Cow<'_, str>> = serde_json::from_str(raw.get())
                .map_err(|_| bad("models", "models must be an array of model names"))?;
            if names.len() > Chain::CAPACITY {
                return Err(bad(
                    "models",
                    format!("models may list at most {} models", Chain::CAPACITY),
                ));
            }
            for name in names {
                let m = resolve(&name).ok_or_else(|| Refusal::UnknownModel {
                    name: name.clone().into_owned(),
                })?;
                prefs.models.push(m);
            }
        }
        if let Some(raw) = provider.filter(|r| r.get() != "null") {
            let p: Provider<'_> = serde_json::from_str(raw.get())
                .map_err(|e| bad("provider", format!("invalid provider preferences: {e}")))?;
            if let Some(s) = p.sort {
                prefs.sort = Some(Sort::from_name(&s).ok_or_else(|| {
                    bad(
                        "provider.sort",
                        format!("provider.sort must be one of: {}", Sort::NAMES.join(", ")),
                    )
                })?);
            }
            if let Some(mp) = p.max_price {
                let price = |v: Option<f64>, field: &'static str| match v {
                    None => Ok(f64::INFINITY),
                    Some(v) if v >= 0.0 && v.is_finite() => Ok(v),
                    Some(_) => Err(bad(
                        field,
                        "a max price is dollars per million tokens, 0 or more",
                    )),
                };
                prefs.max_price = Some(Cost {
                    input_per_mtok: price(mp.prompt, "provider.max_price.prompt")?,
                    output_per_mtok: price(mp.completion, "provider.max_price.completion")?,
                });
            }
        }
        let body_ttft = max_ttft_body
            .filter(|r| r.get() != "null")
            .map(|r| {
                serde_json::from_str::<f64>(r.get())
                    .ok()
                    .filter(|v| *v > 0.0)
            })
            .map(|v| {
                v.ok_or_else(|| {
                    bad(
                        "max_ttft_ms",
                        "max_ttft_ms must be a number of milliseconds above 0",
                    )
                })
            })
            .transpose()?;
        let header_ttft = max_ttft_header
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .filter(|v| *v > 0.0 && v.is_finite())
                    .ok_or_else(|| {
                        bad(
                            MAX_TTFT_HEADER,
                            format!("{MAX_TTFT_HEADER} must be a number of milliseconds above 0"),
                        )
                    })
            })
            .transpose()?;
        prefs.max_ttft_ms = header_ttft.or(body_ttft);
        Ok(prefs)
    }
}

fn bad(param: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::BadPreference {
        param,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    fn resolve(name: &str) -> Option<usize> {
        ["a", "b"].iter().position(|n| *n == name)
    }

    #[test]
    fn preferences_are_read_and_checked() {
        let p = Prefs::parse(
            Some(raw(r#"["b","a"]"#)),
            Some(raw(
                r#"{"sort":"latency","max_price":{"prompt":1.5},"order":["x"]}"#,
            )),
            Some(raw("250")),
            None,
            resolve,
        )
        .unwrap();
        assert_eq!(p.models, [1, 0]);
        assert_eq!(p.sort, Some(Sort::Latency));
        let mp = p.max_price.unwrap();
        assert_eq!(mp.input_per_mtok, 1.5);
        assert!(mp.output_per_mtok.is_infinite());
        assert_eq!(p.max_ttft_ms, Some(250.0));
        let header = http::HeaderValue::from_static("90");
        let p = Prefs::parse(None, None, Some(raw("250")), Some(&header), resolve).unwrap();
        assert_eq!(p.max_ttft_ms, Some(90.0), "the header wins");
    }

    #[test]
    fn bad_preferences_name_their_field() {
        let err = |m, p, t| match Prefs::parse(m, p, t, None, resolve) {
            Err(Refusal::BadPreference { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(Some(raw(r#""a""#)), None, None), "models");
        assert_eq!(
            err(None, Some(raw(r#"{"sort":"speed"}"#)), None),
            "provider.sort"
        );
        assert_eq!(
            err(None, Some(raw(r#"{"max_price":{"completion":-1}}"#)), None),
            "provider.max_price.completion"
        );
        assert_eq!(err(None, None, Some(raw("0"))), "max_ttft_ms");
        assert!(matches!(
            Prefs::parse(Some(raw(r#"["a","gpt-9"]"#)), None, None, None, resolve),
            Err(Refusal::UnknownModel { name }) if name == "gpt-9"
        ));
    }
}
