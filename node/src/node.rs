//! `rendertrust node start`: wires the node's parts together and runs until
//! SIGINT or SIGTERM.
//!
//! Order at start: data dir → keys → store → hardware probe → benchmark
//! (cached per hardware fingerprint) → swarm → ledger service (ledger
//! peers: journal replay, anchor backend) → job service → API. The API's bound address is
//! written to `<data_dir>/api.url` once it listens (tools such as `devnet`
//! wait for it), and removed on a clean stop. On stop the store is flushed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rendertrust_protocol::capacity::CapacityConfig;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::net::{self, NetConfig};
use crate::{keys, probe, runtime, store};

/// Writes `contents` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Runs a node with this configuration until a shutdown signal.
pub async fn start(config: Config) -> Result<()> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let key = keys::load_or_create_identity(&data_dir)?;
    let wrap = keys::load_or_create_wrap_key(&data_dir)?;
    let store = store::Store::open(&data_dir)?;
    tracing::info!(peer_id = %key.node_id(), data_dir = %data_dir.display(), "node starting");

    let hw = probe::probe(&data_dir);
    let hw_for_bench = hw.clone();
    let store_for_bench = store.clone();
    let bench = tokio::task::spawn_blocking(move || {
        probe::benchmark_score(
            &store_for_bench,
            &hw_for_bench,
            runtime::builtin::benchmark_mfpm,
        )
    })
    .await
    .context("benchmark task")?;
    tracing::info!(frames_per_minute = bench as f64 / 1000.0, "benchmark score");

    let template = hw.to_advert_template(
        key.node_id(),
        wrap.public(),
        config.roles.clone(),
        bench,
        config.price_per_task,
        config.max_tasks,
        config.region.clone(),
    );
    let (advert_tx, advert_rx) = watch::channel(template);

    let net_config = NetConfig {
        // Bans of misbehaving peers survive a restart (net::guard).
        bans: Some(store.tree("bans").context("opening the bans tree")?),
        listen: config.listen_multiaddrs()?,
        bootstrap: config.bootstrap_multiaddrs()?,
        roles: config.roles.clone(),
        kad_server: config.kad_server,
        capacity: CapacityConfig {
            ttl_ms: config.capacity_ttl_secs.saturating_mul(1000),
            ..CapacityConfig::default()
        },
        advert_interval: Duration::from_secs(config.advert_interval_secs.max(1)),
        ..NetConfig::default()
    };
    let net::Spawned {
        handle: net,
        task: net_task,
        inbound,
        capacity_version,
    } = net::spawn(&key, net_config, advert_rx)
        .await
        .context("starting the libp2p swarm")?;

    let content =
        crate::content::ContentStore::open(&data_dir, crate::content::ContentConfig::default())
            .with_context(|| format!("opening the content store in {}", data_dir.display()))?;
    let timeout_ms = config.heartbeat_timeout_secs.saturating_mul(1000);
    let jobs_config = crate::jobs::JobsConfig {
        max_tasks: config.max_tasks,
        heartbeat_interval_ms: (timeout_ms / 5).max(1000),
        limits: runtime::Limits::default(),
        gpu: hw
            .gpus
            .first()
            .and_then(|g| runtime::GpuBackend::for_vendor(g.vendor)),
        scheduler: rendertrust_protocol::scheduler::SchedulerConfig {
            heartbeat_timeout_ms: timeout_ms,
            ..Default::default()
        },
        reputation: Default::default(),
        #[cfg(feature = "dishonest-test-hooks")]
        dishonest: config.dishonest,
    };
    // The ledger service, on ledger peers: the job service hands it ledger
    // gossip, ledger requests and this node's own ledger events.
    let is_ledger = config
        .roles
        .contains(&rendertrust_protocol::wire::Role::Ledger);
    let (ledger_local, ledger_handle, ledger_task) = if is_ledger {
        let (ledger_config, rollup_config) = config
            .ledger
            .to_protocol()
            .context("reading the [ledger] settings")?;
        let (local_tx, local_rx) = tokio::sync::mpsc::channel(crate::ledger::service::LOCAL_QUEUE);
        let (handle, commands) = crate::ledger::LedgerHandle::channel();
        let task = crate::ledger::service::spawn(crate::ledger::LedgerParts {
            key: rendertrust_protocol::identity::NodeKey::from_secret_bytes(&key.secret_bytes()),
            net: net.clone(),
            store: store.clone(),
            inbound: local_rx,
            commands,
            ledger: ledger_config,
            rollup: rollup_config,
            anchor: config.anchor.clone(),
            warmup: Duration::from_secs(config.advert_interval_secs.max(1) + 2),
        })
        .await
        .context("starting the ledger service")?;
        (Some(local_tx), Some(handle), Some(task))
    } else {
        (None, None, None)
    };

    let (jobs, jobs_commands) = crate::jobs::JobsHandle::channel();
    let jobs_task = crate::jobs::spawn(crate::jobs::ServiceParts {
        key: rendertrust_protocol::identity::NodeKey::from_secret_bytes(&key.secret_bytes()),
        wrap,
        net: net.clone(),
        inbound,
        commands: jobs_commands,
        store: store.clone(),
        content,
        data_dir: data_dir.clone(),
        roles: config.roles.clone(),
        advert: advert_tx,
        capacity_version,
        config: jobs_config,
        ledger: ledger_local,
    })
    .context("starting the job service")?;

    let state = ApiState {
        jobs,
        net: net.clone(),
        token: config.api_token.as_deref().map(Arc::from),
        data_dir: Arc::from(data_dir.display().to_string()),
        ledger: ledger_handle,
        node: key.node_id(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound, api_task) = api::serve(config.api, state, async {
        let _ = stop_rx.await;
    })
    .await
    .with_context(|| format!("binding the API on {}", config.api))?;
    let url_file = data_dir.join("api.url");
    write_atomic(&url_file, format!("http://{bound}\n").as_bytes())
        .with_context(|| format!("writing {}", url_file.display()))?;
    tracing::info!(api = %format!("http://{bound}"), "API listening");

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&url_file);
    let _ = stop_tx.send(());
    let _ = net.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), net_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), jobs_task).await;
    if let Some(t) = ledger_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    store.flush_async().await?;
    tracing::info!("stopped");
    Ok(())
}
