//! ServerState: usability, breaker and health interplay, estimates and loads.

use super::*;

#[test]
fn inflight_guard_counts_until_dropped() {
    let s = Arc::new(ServerState::default());
    let a = s.start(0);
    let b = s.start(0);
    assert_eq!(s.inflight(), 2);
    drop(a);
    assert_eq!(s.inflight(), 1);
    drop(b);
    assert_eq!(s.inflight(), 0);
}

#[test]
fn cooldown_keeps_the_server_out_until_it_ends_and_never_shrinks() {
    let s = ServerState::default();
    assert!(s.is_usable(1_000));
    s.cool_down(1_000, Duration::from_secs(2));
    assert!(!s.is_usable(2_999));
    s.cool_down(1_500, Duration::from_millis(10));
    assert!(!s.is_usable(2_999));
    assert!(s.is_usable(3_000));
}

#[test]
fn a_drained_server_takes_no_new_requests_until_undrained() {
    let s = ServerState::default();
    s.set_draining(true);
    assert!(!s.is_usable(0));
    s.set_draining(false);
    assert!(s.is_usable(0));
}

#[test]
fn registry_returns_the_same_state_for_the_same_id() {
    let r = Registry::default();
    let a = r.get("10.0.0.1:8000");
    let _guard = a.start(0);
    assert_eq!(r.get("10.0.0.1:8000").inflight(), 1);
    assert_eq!(r.get("10.0.0.2:8000").inflight(), 0);
}

#[test]
fn an_open_breaker_or_a_down_server_takes_nothing() {
    let s = ServerState::default();
    for i in 0..4 {
        assert_eq!(s.record(Outcome::Failure, i), None);
    }
    assert_eq!(
        s.record(Outcome::Neutral, 5),
        None,
        "a cooldown is no failure"
    );
    assert!(s.is_usable(5));
    assert_eq!(s.record(Outcome::Failure, 6), Some(BreakerState::Open));
    assert!(!s.is_usable(7));
    assert_eq!(s.breaker_state(7), BreakerState::Open);
    assert!(s.is_usable(30_006), "half-open after the open period");

    let s = ServerState::default();
    s.set_health(Health::Unhealthy, 10);
    assert!(!s.is_usable(11));
    s.set_health(Health::Healthy, 20);
    assert!(s.is_usable(21));
}

#[test]
fn probes_that_succeed_close_the_breaker_and_start_the_slow_start() {
    let s = Arc::new(ServerState::default());
    for i in 0..5 {
        s.record(Outcome::Failure, i);
    }
    let now = 40_000;
    let probes: Vec<_> = (0..3).map(|_| s.start(now)).collect();
    assert!(!s.is_usable(now), "every probe slot is taken");
    for _ in 0..2 {
        assert_eq!(s.record(Outcome::Success, now + 10), None);
    }
    assert_eq!(
        s.record(Outcome::Success, now + 10),
        Some(BreakerState::Closed)
    );
    drop(probes);
    let slow = Duration::from_secs(10);
    assert!((s.ramp(now + 10, slow) - 0.1).abs() < 1e-9);
    assert!((s.ramp(now + 5_010, slow) - 0.5).abs() < 1e-9);
    assert_eq!(s.ramp(now + 10_010, slow), 1.0);
    assert_eq!(s.ramp(now + 10, slow), 1.0, "the ramp is over for good");
}

#[test]
fn a_server_back_from_unhealthy_ramps_up() {
    let s = ServerState::default();
    s.set_health(Health::Healthy, 5);
    assert_eq!(
        s.ramp(6, Duration::from_secs(10)),
        1.0,
        "never down: no ramp"
    );
    s.set_health(Health::Unhealthy, 10);
    s.set_health(Health::Healthy, 1_000);
    assert!((s.ramp(3_000, Duration::from_secs(10)) - 0.2).abs() < 1e-9);
    assert_eq!(s.ramp(3_000, Duration::ZERO), 1.0);
}

#[test]
fn the_ewma_jumps_to_peaks_and_decays_towards_faster_samples() {
    let s = ServerState::default();
    assert_eq!(s.ewma_ms(), None);
    s.observe_ttfb(Duration::from_millis(100), 1_000);
    assert_eq!(s.ewma_ms(), Some(100.0));
    s.observe_ttfb(Duration::from_millis(400), 1_001);
    assert_eq!(s.ewma_ms(), Some(400.0), "a peak takes over at once");
    s.observe_ttfb(Duration::from_millis(100), 1_002);
    let barely = s.ewma_ms().unwrap();
    assert!(
        barely > 399.0,
        "1 ms later a fast sample barely counts: {barely}"
    );
    s.observe_ttfb(Duration::from_millis(100), 60_000);
    let later = s.ewma_ms().unwrap();
    assert!(
        (100.0..101.0).contains(&later),
        "a minute later it does: {later}"
    );
}

#[test]
fn predicted_ttft_follows_stream_samples_and_the_engine_queue() {
    let s = ServerState::default();
    assert_eq!(s.predicted_ttft_ms(0, 1_000), None, "nothing measured");
    s.observe_ttfb(Duration::from_millis(400), 10);
    assert_eq!(
        s.predicted_ttft_ms(10, 1_000),
        Some(400.0),
        "first byte until a stream"
    );
    s.observe_ttft(Duration::from_millis(100), 20);
    assert_eq!(s.predicted_ttft_ms(20, 1_000), Some(100.0));
    s.observe_ttft(Duration::from_millis(300), 20_020);
    let blended = s.ttft_ms().unwrap();
    assert!(
        (270.0..300.0).contains(&blended),
        "20 s later the new sample weighs 86 %: {blended}"
    );
    s.set_engine_load(
        EngineLoad {
            running: 8.0,
            waiting: 2.0,
            kv_usage: Some(0.1),
            kv_tokens: 0.0,
        },
        20_020,
    );
    let queued = s.predicted_ttft_ms(20_030, 1_000).unwrap();
    assert!(
        (queued - 3.0 * blended).abs() < 1e-9,
        "two waiting: three TTFTs"
    );
    assert_eq!(
        s.predicted_ttft_ms(30_000, 1_000),
        Some(blended),
        "a stale reading is ignored"
    );
    s.observe_decode_rate(50.0, 1);
    s.observe_decode_rate(f64::INFINITY, 2);
    assert_eq!(s.decode_rate(), Some(50.0));
}

#[test]
fn load_blends_the_engine_reading_with_requests_sent_and_finished_since() {
    let s = Arc::new(ServerState::default());
    let _a = s.start(0);
    assert_eq!(s.load(0, 1_000), 1.0, "no reading: in-flight");
    s.set_engine_load(
        EngineLoad {
            running: 4.0,
            waiting: 6.0,
            kv_usage: Some(0.5),
            kv_tokens: 0.0,
        },
        100,
    );
    assert_eq!(s.load(200, 1_000), 10.5);
    let _b = s.start(0);
    let _c = s.start(0);
    assert_eq!(s.load(200, 1_000), 12.5);
    drop(_a);
    drop(_b);
    assert_eq!(
        s.load(200, 1_000),
        10.5,
        "a request finished since: one less"
    );
    let _b = s.start(0);
    let _d = s.start(0);
    assert_eq!(s.load(2_000, 1_000), 3.0, "a stale reading is ignored");
    s.clear_engine_load();
    assert_eq!(s.load(200, 1_000), 3.0);
}
