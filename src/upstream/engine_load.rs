//! The load an inference engine reports on its own `/metrics` (Prometheus text format):
//! requests running and waiting, and how full its KV cache is. Scraped in the background by
//! `upstream::monitor`; read by the `least_load` policy.

use super::engine::Engine;

/// One scrape's reading.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineLoad {
    pub running: f64,
    pub waiting: f64,
    /// KV cache (or token) usage, 0..1; `None` when the engine does not report it (TGI, and
    /// llama.cpp since it dropped `llamacpp:kv_cache_usage_ratio`): not reported is not empty.
    pub kv_usage: Option<f64>,
    /// Tokens the KV cache holds in all; 0 when the engine does not report it (vLLM's
    /// `cache_config_info` labels `num_gpu_blocks` × `block_size`, SGLang's
    /// `max_total_num_tokens`).
    pub kv_tokens: f64,
}

/// Metric names per engine: (running, waiting, kv usage).
struct Names {
    running: &'static [&'static str],
    waiting: &'static [&'static str],
    kv: &'static [&'static str],
}

fn names(engine: Engine) -> Option<Names> {
    Some(match engine {
        Engine::Vllm => Names {
            running: &["vllm:num_requests_running"],
            waiting: &["vllm:num_requests_waiting"],
            // The name changed in vLLM 0.10; older servers report the second.
            kv: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
        },
        Engine::Sglang => Names {
            running: &["sglang:num_running_reqs"],
            waiting: &["sglang:num_queue_reqs"],
            kv: &["sglang:token_usage"],
        },
        Engine::Tgi => Names {
            running: &["tgi_batch_current_size"],
            waiting: &["tgi_queue_size"],
            kv: &[],
        },
        Engine::Llamacpp => Names {
            running: &["llamacpp:requests_processing"],
            waiting: &["llamacpp:requests_deferred"],
            kv: &["llamacpp:kv_cache_usage_ratio"],
        },
        // Ollama has no metrics; an unknown OpenAI-compatible server may not either.
        Engine::Ollama | Engine::Openai => return None,
    })
}

/// Whether the engine exposes load metrics worth scraping.
pub fn scrapes(engine: Engine) -> bool {
    names(engine).is_some()
}

/// Reads the load out of a `/metrics` body. Series of one name are summed (vLLM labels them by
/// model). `None` when neither the running nor the waiting metric is there: not this engine,
/// or not its metrics endpoint.
pub fn parse(engine: Engine, text: &str) -> Option<EngineLoad> {
    let names = names(engine)?;
    let mut load = EngineLoad::default();
    let mut seen = false;
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else {
            continue;
        };
        if names.running.contains(&name) {
            load.running += value;
            seen = true;
        } else if names.waiting.contains(&name) {
            load.waiting += value;
            seen = true;
        } else if names.kv.contains(&name) {
            load.kv_usage = Some(load.kv_usage.map_or(value, |kv| kv.max(value)));
        } else if let Some(tokens) = kv_tokens(engine, name, line, value) {
            load.kv_tokens = load.kv_tokens.max(tokens);
        }
    }
    seen.then_some(load)
}

/// The KV cache's size in tokens, if this sample says it.
fn kv_tokens(engine: Engine, name: &str, line: &str, value: f64) -> Option<f64> {
    match (engine, name) {
        (Engine::Vllm, "vllm:cache_config_info") => {
            let blocks: f64 = label(line, "num_gpu_blocks")?.parse().ok()?;
            let size: f64 = label(line, "block_size")?.parse().ok()?;
            Some(blocks * size).filter(|t| t.is_finite() && *t > 0.0)
        }
        (Engine::Sglang, "sglang:max_total_num_tokens") => Some(value).filter(|t| *t > 0.0),
        _ => None,
    }
}

/// The value of label `key` in a sample line (`name{key="value",...} 1`).
fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let labels = &line[line.find('{')? + 1..line.rfind('}')?];
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Splits `name{labels} value [timestamp]` into name and value.
fn sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let rest = if rest.starts_with('{') {
        // Label values may hold spaces and braces inside quotes; the set ends at the last '}'.
        &rest[rest.rfind('}')? + 1..]
    } else {
        rest
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    value.is_finite().then_some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_metrics_and_sums_series() {
        let text = "\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"llama\"} 3.0
vllm:num_requests_running{engine=\"1\",model_name=\"llama\"} 2.0
vllm:num_requests_waiting{engine=\"0\",model_name=\"llama\"} 7.0
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"llama\"} 0.42
vllm:num_requests_waiting_by_reason{reason=\"x\"} 100
";
        let load = parse(Engine::Vllm, text).unwrap();
        assert_eq!(
            load,
            EngineLoad {
                running: 5.0,
                waiting: 7.0,
                kv_usage: Some(0.42),
                kv_tokens: 0.0,
            }
        );
        let sized = format!("{text}vllm:cache_config_info{{block_size=\"16\",cache_dtype=\"auto\",num_gpu_blocks=\"27000\",num_cpu_blocks=\"2048\"}} 1.0\n");
        assert_eq!(parse(Engine::Vllm, &sized).unwrap().kv_tokens, 432_000.0);
    }

    #[test]
    fn reads_sglang_tgi_and_llamacpp() {
        let sg = "sglang:num_running_reqs{model_name=\"q\"} 4\nsglang:num_queue_reqs{model_name=\"q\"} 1\nsglang:token_usage{model_name=\"q\"} 0.5\n";
        assert_eq!(
            parse(Engine::Sglang, sg),
            Some(EngineLoad {
                running: 4.0,
                waiting: 1.0,
                kv_usage: Some(0.5),
                kv_tokens: 0.0,
            })
        );
        let tgi = "tgi_queue_size 6\ntgi_batch_current_size 8\n";
        assert_eq!(
            parse(Engine::Tgi, tgi),
            Some(EngineLoad {
                running: 8.0,
                waiting: 6.0,
                kv_usage: None,
                kv_tokens: 0.0,
            })
        );
        let ll = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 2\n";
        assert_eq!(parse(Engine::Llamacpp, ll).map(|l| l.waiting), Some(2.0));
        let sized = format!("{sg}sglang:max_total_num_tokens{{model_name=\"q\"}} 150000\n");
        assert_eq!(parse(Engine::Sglang, &sized).unwrap().kv_tokens, 150_000.0);
    }

    /// Each engine's `/metrics` as tests/fixtures/engines/ keeps it, per version.
    #[test]
    fn every_engine_fixture_reads_as_its_engine_reports() {
        let fixture = |name: &str| {
            let path = format!(
                "{}/tests/fixtures/engines/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read_to_string(&path).unwrap()
        };
        let read = |engine, name: &str| parse(engine, &fixture(name)).unwrap();
        let reading = |running, waiting, kv_usage, kv_tokens| EngineLoad {
            running,
            waiting,
            kv_usage,
            kv_tokens,
        };
        // V0: the KV gauge's old name, one series per model; the cache size in labels.
        assert_eq!(
            read(Engine::Vllm, "vllm-0.6.3-metrics.txt"),
            reading(12.0, 4.0, Some(0.6875), 7281.0 * 16.0)
        );
        // V1 with two data-parallel engine cores: queues summed, the fuller cache counts.
        assert_eq!(
            read(Engine::Vllm, "vllm-0.11-metrics.txt"),
            reading(60.0, 7.0, Some(0.8125), 31744.0 * 16.0)
        );
        // Exponent notation; the cache size is a gauge of its own.
        assert_eq!(
            read(Engine::Sglang, "sglang-0.4-metrics.txt"),
            reading(118.0, 37.0, Some(0.41), 456_874.0)
        );
        // TGI and today's llama.cpp report no KV usage: none, not 0.
        assert_eq!(
            read(Engine::Tgi, "tgi-3.x-metrics.txt"),
            reading(24.0, 9.0, None, 0.0)
        );
        assert_eq!(
            read(Engine::Llamacpp, "llamacpp-11434-metrics.txt"),
            reading(2.0, 1.0, None, 0.0)
        );
        // An engine's page read as another engine's is no reading.
        assert_eq!(
            parse(Engine::Sglang, &fixture("vllm-0.11-metrics.txt")),
            None
        );
        assert_eq!(parse(Engine::Vllm, &fixture("tgi-3.x-metrics.txt")), None);
    }

    #[test]
    fn labels_with_spaces_and_garbage_lines_are_handled() {
        let text = "vllm:num_requests_running{model_name=\"a b}c\"} 2 1700000000\nnot a metric\nvllm:num_requests_waiting NaN\n";
        let load = parse(Engine::Vllm, text).unwrap();
        assert_eq!(load.running, 2.0);
        assert_eq!(load.waiting, 0.0);
    }

    #[test]
    fn other_metrics_are_not_a_reading() {
        assert_eq!(parse(Engine::Vllm, "process_cpu_seconds_total 3\n"), None);
        assert_eq!(parse(Engine::Ollama, "anything 1\n"), None);
    }
}
