//! The request view and the body edits built on it, on any bytes: a body the view accepts is
//! JSON, and every edit leaves JSON with the intended change and nothing else changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::openai::request::{ask_for_usage, replace_model, RequestView};

fuzz_target!(|body: &[u8]| {
    let Ok(view) = RequestView::parse(body) else {
        return;
    };
    let Ok(original) = serde_json::from_slice::<Value>(body) else {
        panic!("the view accepted what is not JSON");
    };
    // The model splice: only `model` changes.
    let spliced = replace_model(body, view.model_span.clone(), br#""fuzz/served""#);
    let mut got: Value = serde_json::from_slice(&spliced).expect("the splice broke the JSON");
    assert_eq!(got["model"], "fuzz/served");
    got["model"] = original["model"].clone();
    assert_eq!(got, original, "the splice changed more than the model");
    // Asking for usage: only `stream_options.include_usage` changes, and the model span
    // still points at the model.
    if let Some((asked, span)) = ask_for_usage(body, view.stream_options_span.clone(), view.model_span.clone()) {
        let mut got: Value = serde_json::from_slice(&asked).expect("asking for usage broke the JSON");
        assert_eq!(got["stream_options"]["include_usage"], true);
        let model: Value = serde_json::from_slice(&asked[span]).expect("the model span moved wrongly");
        assert_eq!(model, original["model"]);
        let mut want = original.clone();
        match want.get_mut("stream_options") {
            Some(Value::Object(o)) => {
                o.insert("include_usage".into(), true.into());
            }
            _ => want["stream_options"] = serde_json::json!({"include_usage": true}),
        }
        if let Some(o) = got.as_object_mut() {
            o.remove("stream_options");
        }
        if let Some(o) = want.as_object_mut() {
            o.remove("stream_options");
        }
        assert_eq!(got, want, "asking for usage changed more than stream_options");
    }
});
