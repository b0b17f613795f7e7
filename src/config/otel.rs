//! `otel:`: OpenTelemetry trace export over OTLP/HTTP. Absent: no tracing, and the request path
//! does not look at it beyond one branch.

use std::time::Duration;

use super::file::FileOtel;
use super::values::{duration, Errors};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Protobuf,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// The traces URL, path included.
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    pub sample_ratio: f64,
    pub batch_delay: Duration,
    pub timeout: Duration,
}

impl OtelSettings {
    /// As `/admin/config` shows it.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint,
            "protocol": match self.protocol { Protocol::Protobuf => "http/protobuf", Protocol::Json => "http/json" },
            "service_name": self.service_name,
            "sample_ratio": self.sample_ratio,
            "batch_delay": humantime::format_duration(self.batch_delay).to_string(),
            "timeout": humantime::format_duration(self.timeout).to_string(),
        })
    }
}

pub(super) fn build(errs: &mut Errors, file: Option<&FileOtel>) -> Option<OtelSettings> {
    let file = file?;
    let endpoint = match file.endpoint.as_deref() {
        None => {
            errs.push(
                "otel.endpoint",
                "is required (the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318)",
            );
            String::new()
        }
        Some(e) => match traces_url(e) {
            Some(url) => url,
            None => {
                errs.push(
                    "otel.endpoint",
                    format!("{e:?} is not an http:// URL (e.g. http://127.0.0.1:4318; no TLS here: send to a collector beside the gateway)"),
                );
                String::new()
            }
        },
    };
    let protocol = match file.protocol.as_deref() {
        None | Some("http/protobuf") => Protocol::Protobuf,
        Some("http/json") => Protocol::Json,
        Some(other) => {
            errs.push(
                "otel.protocol",
                format!("{other:?} is not one of: http/protobuf, http/json"),
            );
            Protocol::Protobuf
        }
    };
    let sample_ratio = file.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        errs.push("otel.sample_ratio", "must be between 0 and 1");
    }
    let service_name = file
        .service_name
        .clone()
        .unwrap_or_else(|| "switchyard".to_owned());
    if service_name.is_empty() {
        errs.push("otel.service_name", "must not be empty");
    }
    Some(OtelSettings {
        endpoint,
        protocol,
        service_name,
        sample_ratio,
        batch_delay: duration(errs, "otel.batch_delay", file.batch_delay.as_deref(), 5),
        timeout: duration(errs, "otel.timeout", file.timeout.as_deref(), 10),
    })
}

/// `http://host:4318` → `http://host:4318/v1/traces`; a URL with a path is taken as it is.
fn traces_url(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return None;
    }
    Some(if path.trim_end_matches('/').is_empty() {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otel(yaml: &str) -> (Option<OtelSettings>, Vec<String>) {
        let file: FileOtel = serde_yaml::from_str(yaml).unwrap();
        let mut errs = Errors::default();
        let o = build(&mut errs, Some(&file));
        (o, errs.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn defaults_and_the_traces_path() {
        let (o, errs) = otel("endpoint: http://collector:4318");
        assert!(errs.is_empty(), "{errs:?}");
        let o = o.unwrap();
        assert_eq!(o.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(o.protocol, Protocol::Protobuf);
        assert_eq!(o.service_name, "switchyard");
        assert_eq!(o.sample_ratio, 1.0);
        assert_eq!(o.batch_delay, Duration::from_secs(5));
        let (o, _) = otel("endpoint: http://otlp.example/custom/traces\nprotocol: http/json");
        let o = o.unwrap();
        assert_eq!(o.endpoint, "http://otlp.example/custom/traces");
        assert_eq!(o.protocol, Protocol::Json);
        assert_eq!(
            otel("endpoint: http://c:4318/").0.unwrap().endpoint,
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn bad_values_are_named_by_path() {
        let (_, errs) = otel("protocol: grpc\nsample_ratio: 2\nbatch_delay: soon");
        let paths: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "otel.endpoint",
                "otel.protocol",
                "otel.sample_ratio",
                "otel.batch_delay"
            ],
            "{errs:?}"
        );
        for bad in ["collector:4318", "https://collector:4318"] {
            let (_, errs) = otel(&format!("endpoint: {bad}"));
            assert!(errs[0].starts_with("otel.endpoint"), "{errs:?}");
        }
    }
}
