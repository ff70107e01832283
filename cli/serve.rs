//! `burrow serve`: the web explorer ([`burrow::explore::web`]) over the
//! store, following it as a consumer does, until interrupted (Ctrl-C or
//! SIGTERM). It prints the address it serves (`serving http://ADDR/`, or
//! with `--json` an object with `url`) once it listens.

use crate::output::Out;
use anyhow::{Context, Result};
use burrow::blobstore::BlobStore;
use burrow::explore::web::{WebConfig, WebServer};
use serde_json::json;

pub async fn run(cfg: WebConfig, store: BlobStore, out: &mut Out) -> Result<()> {
    let cache = cfg.cache_dir.clone();
    let server = WebServer::start(store, cfg).await.with_context(|| {
        format!(
            "cannot serve the explorer (caches under {})",
            cache.display()
        )
    })?;
    let url = format!("http://{}/", server.local_addr());
    if out.json {
        out.json(&json!({ "event": "serving", "url": url }))?;
    } else {
        out.line(&format!("serving {url}"))?;
    }
    crate::follow::shutdown_signal().await;
    server.shutdown().await.context("the explorer failed")?;
    Ok(())
}
