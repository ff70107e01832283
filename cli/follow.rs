//! `burrow follow`: a real consumer that watches the store in the
//! background (retrying, behind a circuit breaker) and prints a line for
//! each version it reaches and each change of its health, until
//! interrupted (Ctrl-C or SIGTERM). It reports readiness: a `ready` line
//! when the first state serves, and until then a `waiting` line after each
//! `--ready-timeout-ms` without one, saying what the consumer waits for.
//! With `--metrics-addr` it also serves the metrics at `/metrics` for a
//! Prometheus scraper.

use crate::config::FollowConfig;
use crate::output::{self, Out};
use anyhow::{Context, Result};
use burrow::blobstore::resilience::{BreakerState, Resilience};
use burrow::blobstore::BlobStore;
use burrow::consumer::{
    ConsumerBuilder, ConsumerError, Health, NotifyConfig, ReadState, Waiting, WatchConfig,
    WatchEvent,
};
use burrow::error::Error;
use serde_json::json;
use std::sync::Arc;

pub async fn run(cfg: &FollowConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let (store, breaker) = store.resilient_with_breaker(&Resilience::system());
    let consumer = Arc::new(
        ConsumerBuilder::new(store)
            .cache_dir(&cfg.cache)
            .breaker(breaker)
            .cache_retention(cfg.retention)
            .build()
            .with_context(|| format!("cannot open cache {}", cfg.cache.display()))?,
    );
    let _metrics = match cfg.metrics_addr {
        Some(addr) => {
            let health_of = Arc::clone(&consumer);
            // health() sets the seconds-since-refresh gauge as of the scrape.
            let server = burrow::metrics_http::serve_with(addr, move || {
                health_of.health();
            })
            .await?;
            print_metrics_addr(out, server.local_addr())?;
            Some(server)
        }
        None => None,
    };
    let mut handle = consumer.watch(WatchConfig {
        interval: cfg.interval,
        notify: cfg.notify.clone().map(|channel| NotifyConfig {
            fallback_interval: cfg.fallback_interval,
            ..NotifyConfig::new(channel)
        }),
        ..WatchConfig::default()
    });
    let mut events = handle.subscribe();
    let mut last_health: Option<(bool, BreakerState)> = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let started = std::time::Instant::now();
    let mut ready = false;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            outcome = consumer.ready(cfg.ready_timeout), if !ready => {
                ready = print_readiness(out, outcome, started)?;
                continue;
            }
            _ = &mut stop => break,
        };
        let event = match event {
            Ok(event) => event,
            // Fell behind: the next event still carries the current state.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        let health = consumer.health();
        print_event(out, &event, &health)?;
        let now = (
            health.is_current(),
            health.breaker.unwrap_or(BreakerState::Closed),
        );
        if last_health.is_some_and(|h| h != now) {
            print_health(out, &health)?;
        }
        last_health = Some(now);
    }
    handle.shutdown().await;
    Ok(())
}

/// Prints what [`Consumer::ready`] returned: `ready` with the version and
/// the time since the start, or `waiting` with what the consumer waits
/// for. Returns whether the consumer is ready.
fn print_readiness(
    out: &mut Out,
    outcome: Result<Arc<ReadState>, Error>,
    started: std::time::Instant,
) -> Result<bool> {
    let elapsed = started.elapsed();
    match outcome {
        Ok(state) => {
            let version = state.version();
            if out.json {
                out.json(
                    &json!({ "event": "ready", "version": version, "ms": output::millis(elapsed) }),
                )?;
            } else {
                out.line(&format!(
                    "ready: serving version {version} ({} after start)",
                    output::duration(elapsed)
                ))?;
            }
            Ok(true)
        }
        Err(Error::Consumer(ConsumerError::NotReady { waiting, .. })) => {
            if out.json {
                out.json(&json!({
                    "event": "waiting",
                    "ms": output::millis(elapsed),
                    "waiting_for": waiting_key(&waiting),
                    "reason": waiting.to_string(),
                }))?;
            } else {
                out.line(&format!(
                    "not ready after {}: {waiting}",
                    output::duration(elapsed)
                ))?;
            }
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// A stable name of what a consumer waits for, for `--json`.
fn waiting_key(w: &Waiting) -> &'static str {
    match w {
        Waiting::NotStarted => "not_started",
        Waiting::Polling => "polling",
        Waiting::NoAnnouncement => "no_announcement",
        Waiting::StoreUnreachable { .. } => "store_unreachable",
        Waiting::Fetching { .. } => "fetching",
        _ => "other",
    }
}

fn print_metrics_addr(out: &mut Out, addr: std::net::SocketAddr) -> std::io::Result<()> {
    if out.json {
        out.json(&json!({ "event": "metrics", "url": format!("http://{addr}/metrics") }))
    } else {
        out.line(&format!("metrics at http://{addr}/metrics"))
    }
}

fn print_event(out: &mut Out, event: &WatchEvent, health: &Health) -> std::io::Result<()> {
    match event {
        WatchEvent::Refreshed(r) => {
            if out.json {
                out.json(&json!({
                    "event": "version",
                    "version": r.to,
                    "from": r.from,
                    "steps": r.steps.iter().map(|s| s.blob().to_string()).collect::<Vec<_>>(),
                    "fetched_bytes": r.fetched_bytes,
                    "ms": output::millis(r.duration),
                    "warm_up_ms": output::millis(r.warm_up),
                    "evicted_files": r.cache.evicted_files,
                    "evicted_bytes": r.cache.evicted_bytes,
                    "cache_files": r.cache.kept_files,
                    "cache_bytes": r.cache.kept_bytes,
                }))
            } else {
                out.line(&format!(
                    "version {} (from {}, {} blob(s), {} fetched, {}; cache {} in {} file(s), {} evicted)",
                    r.to,
                    r.from.map_or("nothing".to_string(), |v| v.to_string()),
                    r.steps.len(),
                    output::bytes(r.fetched_bytes),
                    output::duration(r.duration),
                    output::bytes(r.cache.kept_bytes),
                    r.cache.kept_files,
                    output::bytes(r.cache.evicted_bytes),
                ))
            }
        }
        WatchEvent::Failed {
            error,
            consecutive,
            retry_in,
        } => {
            if out.json {
                out.json(&json!({
                    "event": "failed",
                    "error": error,
                    "consecutive": consecutive,
                    "retry_in_ms": output::millis(*retry_in),
                    "serving": health.version,
                }))
            } else {
                out.line(&format!(
                    "refresh failed ({consecutive} in a row, retrying in {}); serving version {}: {error}",
                    output::duration(*retry_in),
                    health.version.map_or("none".to_string(), |v| v.to_string()),
                ))
            }
        }
        WatchEvent::CacheCorrupt(fault) => {
            if out.json {
                out.json(&json!({
                    "event": "cache_corrupt",
                    "blob": fault.blob,
                    "path": fault.path.display().to_string(),
                    "reason": fault.reason,
                    "serving": health.version,
                }))
            } else {
                out.line(&format!("cache fault: {fault}"))
            }
        }
        WatchEvent::Channel(state) => {
            if out.json {
                out.json(&json!({
                    "event": "mode",
                    "mode": if state.is_push() { "push" } else { "polling" },
                    "channel": format!("{state:?}").to_lowercase(),
                    "serving": health.version,
                }))
            } else {
                out.line(&format!("mode: {state}"))
            }
        }
        WatchEvent::Recovered => {
            if out.json {
                out.json(&json!({ "event": "recovered", "serving": health.version }))
            } else {
                out.line("recovered: the store answers again")
            }
        }
    }
}

fn print_health(out: &mut Out, h: &Health) -> std::io::Result<()> {
    let breaker = match h.breaker {
        Some(BreakerState::Open) => "open",
        Some(BreakerState::HalfOpen) => "half-open",
        _ => "closed",
    };
    if out.json {
        out.json(&json!({
            "event": "health",
            "version": h.version,
            "newest": h.newest_target,
            "current": h.is_current(),
            "seconds_since_success": h.since_last_success.map(|d| d.as_secs_f64()),
            "consecutive_failures": h.consecutive_failures,
            "breaker": breaker,
            "verified": h.verified,
            "cache_faults": h.cache_faults,
            "mode": h.notify.map(|n| if n.state.is_push() { "push" } else { "polling" }),
            "notifications": h.notify.map(|n| json!({
                "received": n.received,
                "acted_on": n.acted_on,
                "ignored": n.ignored,
                "unconfirmed": n.unconfirmed,
            })),
        }))
    } else {
        out.line(&format!(
            "health: {} (serving {}, newest {}), breaker {breaker}, last success {} ago",
            if h.is_current() { "current" } else { "stale" },
            h.version.map_or("none".to_string(), |v| v.to_string()),
            h.newest_target
                .map_or("unknown".to_string(), |v| v.to_string()),
            h.since_last_success
                .map_or("never".to_string(), output::duration),
        ))
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
