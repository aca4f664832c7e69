//! Measurements for the closing notes, not assertions: run by hand with
//! `cargo build --release --workspace --bins && cargo test --release --test measure -- --ignored --nocapture`.
//! They print figures; they never fail on a timing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::time::Duration;

use rendertrust_e2e::*;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).ceil() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Time for a capacity advert to reach 95% and 100% of a 50-node mesh:
/// each node records when it received the advert (`received_at_ms`) and
/// the advert carries when it was issued; all on one machine, one clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand"]
async fn advert_propagation_50_nodes() {
    const N: usize = 50;
    let mesh = Mesh::start(
        N,
        &["--advert-interval-secs", "10", "--capacity-ttl-secs", "60"],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(peer_id(mesh.api(i)).await);
    }
    for i in 0..N {
        let api = mesh.api(i).clone();
        eventually(
            &format!("node {i} full"),
            Duration::from_secs(300),
            Duration::from_secs(1),
            || {
                let api = api.clone();
                async move {
                    let n = capacity_nodes(&api).await?.len();
                    if n >= N { Ok(()) } else { Err(format!("{n}")) }
                }
            },
        )
        .await;
    }
    let mut p95s = Vec::new();
    let mut maxs = Vec::new();
    for round in 0..5 {
        let origin = (round * 11) % N;
        let who = ids[origin].clone();
        // Wait for a fresh advert of `origin` (issued within the last 3 s), then let it spread.
        let own: CapacityResponse = mesh.api(origin).get("/v1/capacity").await.unwrap();
        let e = own.nodes.iter().find(|e| e.node == who).unwrap().clone();
        let next_issue = e.issued_at_ms + 10_000;
        let wait = next_issue.saturating_sub(rendertrust_node::net::unix_now_ms()) + 4_000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let own: CapacityResponse = mesh.api(origin).get("/v1/capacity").await.unwrap();
        let held = own.nodes.iter().find(|e| e.node == who).unwrap().clone();
        let mut delays = Vec::new();
        let mut by_seq: BTreeMap<u64, usize> = BTreeMap::new();
        for i in (0..N).filter(|i| *i != origin) {
            let c: CapacityResponse = mesh.api(i).get("/v1/capacity").await.unwrap();
            if let Some(x) = c.nodes.iter().find(|x| x.node == who) {
                *by_seq.entry(x.seq).or_default() += 1;
                if x.seq == held.seq {
                    delays.push(x.received_at_ms.saturating_sub(held.issued_at_ms));
                }
            }
        }
        delays.sort_unstable();
        let reached = delays.len();
        let p95 = percentile(&delays, 0.95);
        let max = delays.last().copied().unwrap_or(0);
        eprintln!(
            "round {round}: advert seq {} of node {origin} reached {reached}/{} peers; p95 {p95} ms, 100% {max} ms (seqs seen {by_seq:?})",
            held.seq,
            N - 1
        );
        if reached == N - 1 {
            p95s.push(p95);
            maxs.push(max);
        }
    }
    p95s.sort_unstable();
    maxs.sort_unstable();
    eprintln!(
        "MEASURE advert propagation, 50 nodes: median over {} rounds: 95% in {} ms, 100% in {} ms",
        p95s.len(),
        percentile(&p95s, 0.5),
        percentile(&maxs, 0.5)
    );
    mesh.stop().await;
}

fn proc_stat(pid: u32) -> (u64, u64) {
    // (rss bytes, utime+stime ticks)
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    (rss_kb * 1024, ticks)
}

/// UDP datagrams the kernel dropped for a full socket receive buffer, all
/// sockets of this machine (`RcvbufErrors` of `/proc/net/snmp`).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// An idle node's RSS and CPU after 5 minutes, in a 5-node mesh with default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand"]
async fn idle_node_resources() {
    let mins: u64 = std::env::var("IDLE_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mesh = Mesh::start(5, &[]).await;
    let pid = mesh.nodes[4].as_ref().unwrap().proc.child.id().unwrap();
    tokio::time::sleep(Duration::from_secs(mins * 60)).await;
    let (_, t0) = proc_stat(pid);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (rss, t1) = proc_stat(pid);
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1 - t0) as f64 / hz / 60.0 * 100.0;
    eprintln!(
        "MEASURE idle node after {mins} min: RSS {:.1} MB, CPU {cpu:.2}% of a core (over the following minute)",
        rss as f64 / 1e6
    );
    mesh.stop().await;
}

/// Submit → first assignment on a 20-node mesh: 40 one-frame jobs from a
/// non-scheduler, one after another; the time from `POST /v1/jobs` to the
/// first task having a worker (offered or running), polled every 10 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand"]
async fn submit_to_first_assignment_20_nodes() {
    use rendertrust_node::jobs::submit::{KindRequest, SubmitRequest, VerifyRequest};
    use rendertrust_node::jobs::view::{JobDetail, SubmitView};
    const N: usize = 20;
    let mesh = Mesh::start(
        N,
        &["--advert-interval-secs", "2", "--capacity-ttl-secs", "10"],
    )
    .await;
    for i in 0..N {
        let api = mesh.api(i).clone();
        eventually(
            &format!("node {i} full"),
            Duration::from_secs(300),
            Duration::from_secs(1),
            || {
                let api = api.clone();
                async move {
                    let n = capacity_nodes(&api).await?.len();
                    if n >= N { Ok(()) } else { Err(format!("{n}")) }
                }
            },
        )
        .await;
    }
    let creator = mesh.api(N - 1).clone();
    let mut samples = Vec::new();
    for round in 0..40u32 {
        let req = SubmitRequest {
            kind: KindRequest::Builtin,
            scene: None,
            inputs: vec![],
            frames: Some(format!("{}", round + 1)),
            tiles: None,
            width: Some(64),
            height: Some(36),
            max_price_per_task: None,
            requirements: Default::default(),
            deadline_secs: None,
            verify: VerifyRequest {
                policy: Some("none".into()),
                ..Default::default()
            },
        };
        let start = std::time::Instant::now();
        let v: SubmitView = creator.post("/v1/jobs", &req).await.unwrap();
        loop {
            let d: JobDetail = creator.get(&format!("/v1/jobs/{}", v.id)).await.unwrap();
            if d.tasks.iter().any(|t| t.worker.is_some()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no assignment in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        samples.push(start.elapsed().as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.sort_unstable();
    eprintln!(
        "MEASURE submit -> first assignment, 20 nodes, {} jobs: p50 {} ms, p99 {} ms, min {} ms, max {} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[0],
        samples[samples.len() - 1]
    );
    mesh.stop().await;
}

/// Moves `size` bytes from one in-process node to another over a plain quinn
/// connection on loopback (TLS 1.3, the same crypto backend as libp2p-quic):
/// the baseline of the mesh transfer. With `into`, the receiver lands the
/// bytes as synced 1 MiB files under that directory (the content store's
/// disk work without its hashing). Returns bytes per second.
async fn plain_quic_transfer(size: u64, into: Option<std::path::PathBuf>) -> f64 {
    use std::sync::Arc;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let server_config = quinn::ServerConfig::with_single_cert(vec![der.clone()], key).unwrap();
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_config);
    let recv = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut stream = conn.accept_uni().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        let Some(dir) = into else {
            while let Some(n) = stream.read(&mut buf).await.unwrap() {
                got += n as u64;
            }
            return got;
        };
        // Into files as the content store lands chunks: one synced file per
        // MiB, written on the blocking pool (up to 8 at once).
        std::fs::create_dir_all(&dir).unwrap();
        let mut writes = futures::stream::FuturesUnordered::new();
        let mut i = 0u64;
        loop {
            let mut piece = vec![0u8; 1 << 20];
            let mut filled = 0;
            while filled < piece.len() {
                match stream.read(&mut piece[filled..]).await.unwrap() {
                    Some(n) => filled += n,
                    None => break,
                }
            }
            if filled == 0 {
                break;
            }
            piece.truncate(filled);
            got += filled as u64;
            let path = dir.join(format!("piece-{i}"));
            i += 1;
            writes.push(tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(path).unwrap();
                f.write_all(&piece).unwrap();
                f.sync_all().unwrap();
            }));
            while writes.len() >= 8 {
                futures::StreamExt::next(&mut writes)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        while let Some(w) = futures::StreamExt::next(&mut writes).await {
            w.unwrap();
        }
        got
    });
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let start = std::time::Instant::now();
    let mut s = conn.open_uni().await.unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut sent = 0u64;
    while sent < size {
        let n = (size - sent).min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    s.finish().unwrap();
    let got = recv.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, size);
    conn.close(0u32.into(), b"done");
    size as f64 / secs
}

/// A started node of the measurements: its id, its network, and the sender
/// of its capacity advert (kept alive by the caller).
type MeasureNode = (
    rendertrust_protocol::identity::NodeId,
    rendertrust_node::net::Spawned,
    tokio::sync::watch::Sender<rendertrust_protocol::wire::CapacityAdvert>,
);

/// Two nodes on loopback QUIC (keys from `seed` and `seed + 1`), the second
/// bootstrapped from the first.
async fn node_pair(seed: u8) -> (MeasureNode, MeasureNode) {
    use rendertrust_node::net::{self, NetConfig};
    use rendertrust_protocol::identity::NodeKey;
    let start_node = |seed: u8, bootstrap: Vec<libp2p::Multiaddr>| async move {
        let key = NodeKey::from_secret_bytes(&[seed; 32]);
        let template = worker_advert(key.node_id(), 0);
        let (tx, rx) = tokio::sync::watch::channel(template);
        let config = NetConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            bootstrap,
            kad_server: true,
            ..NetConfig::default()
        };
        let spawned = net::spawn(&key, config, rx).await.unwrap();
        (key.node_id(), spawned, tx)
    };
    let a = start_node(seed, vec![]).await;
    let a_addr: libp2p::Multiaddr = a.1.handle.status().await.unwrap().listen_addrs[0]
        .parse()
        .unwrap();
    let b = start_node(seed + 1, vec![a_addr]).await;
    (a, b)
}

/// `size` bytes from memory to memory over raw libp2p streams on the same
/// stack as the mesh's chunk streams (libp2p-quic, libp2p-stream, the chunk
/// stream protocol), two streams at once as a fetch keeps them, with none
/// of the content store's work (no file read or write, no hashing): the
/// share of the gap to plain quinn that is libp2p's. Returns bytes/s and
/// the CPU seconds used.
async fn raw_libp2p_streams(size: u64) -> (f64, f64) {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    let ((a_id, a, _a_tx), (_b_id, b, _b_tx)) = node_pair(91).await;
    let mut incoming = a.handle.accept_chunk_streams().unwrap();
    for mut inbound in [a.inbound, b.inbound] {
        tokio::spawn(async move { while inbound.recv().await.is_some() {} });
    }
    const STREAMS: u64 = 2;
    tokio::spawn(async move {
        while let Some((_peer, mut s)) = incoming.next().await {
            tokio::spawn(async move {
                let mut go = [0u8; 1];
                s.read_exact(&mut go).await.unwrap();
                let block = vec![7u8; 1 << 20];
                let mut left = size / STREAMS;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    s.write_all(&block[..n]).await.unwrap();
                    left -= n as u64;
                }
                s.close().await.unwrap();
            });
        }
    });
    let cpu = || proc_stat(std::process::id()).1 as f64 / 100.0;
    let (t, c) = (std::time::Instant::now(), cpu());
    let readers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let net = b.handle.clone();
            tokio::spawn(async move {
                let mut s = net.open_chunk_stream(a_id).await.unwrap();
                s.write_all(&[1]).await.unwrap();
                s.flush().await.unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0u64;
                loop {
                    match s.read(&mut buf).await.unwrap() {
                        0 => return got,
                        n => got += n as u64,
                    }
                }
            })
        })
        .collect();
    let mut got = 0;
    for r in readers {
        got += r.await.unwrap();
    }
    let (secs, used) = (t.elapsed().as_secs_f64(), cpu() - c);
    assert_eq!(got, size / STREAMS * STREAMS);
    let _ = a.handle.shutdown().await;
    let _ = b.handle.shutdown().await;
    (got as f64 / secs, used)
}

/// A 1 GiB input moved creator → worker over the mesh, sealed and
/// content-addressed, as the job service does it (`fetch_content` over the
/// `content` service for the manifest and chunk streams for the chunks,
/// every chunk verified and stored), against a plain
/// quinn transfer of the same bytes in the same run (memory to memory, and
/// into synced 1 MiB files as the store lands chunks: the same disk work),
/// and last the same bytes over raw libp2p streams with no store work
/// ([`raw_libp2p_streams`]), which splits the gap into libp2p's share and
/// the store's. Also the CPU time of each (this process, user + system). `MEASURE_BYTES`
/// overrides the size, `MEASURE_IN_FLIGHT` the chunk requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand"]
async fn one_gib_input_over_the_mesh_vs_plain_quic() {
    use rand_chacha::rand_core::SeedableRng;
    use rendertrust_node::content::{
        ContentConfig, ContentStore, FetchOptions, fetch_content, seal_file_into_store,
    };
    use rendertrust_node::jobs::transfer::{self, PeerSource};
    use rendertrust_node::net::Inbound;
    use rendertrust_protocol::seal::JobKey;

    let size: u64 = std::env::var("MEASURE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        let mut block = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9u32;
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let ((a_id, a, _a_tx), (_b_id, b, _b_tx)) = node_pair(71).await;
    let store_a = ContentStore::open(&dir.path().join("a"), ContentConfig::default()).unwrap();
    let store_b = ContentStore::open(&dir.path().join("b"), ContentConfig::default()).unwrap();
    let key = JobKey::generate(&mut rng);
    let t = std::time::Instant::now();
    let sealed = {
        let (s, p, k) = (
            store_a.clone(),
            input.clone(),
            JobKey::from_bytes(*key.as_bytes()),
        );
        tokio::task::spawn_blocking(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
            seal_file_into_store(&s, &p, &k, b"measure", &mut rng).unwrap()
        })
        .await
        .unwrap()
    };
    let seal_secs = t.elapsed().as_secs_f64();
    // The plaintext is not needed any more: give its page cache back before
    // the transfer writes a fresh copy of every chunk.
    std::fs::remove_file(&input).unwrap();
    // A serves content requests from its store.
    let mut inbound = a.inbound;
    let serve_store = store_a.clone();
    let serve_net = a.handle.clone();
    tokio::spawn(async move {
        while let Some(msg) = inbound.recv().await {
            if let Inbound::Request(r) = msg {
                tokio::spawn(transfer::serve(serve_store.clone(), serve_net.clone(), r));
            }
        }
    });
    tokio::spawn(transfer::serve_chunk_streams(
        store_a.clone(),
        a.handle.clone(),
        a.handle.accept_chunk_streams().unwrap(),
    ));
    let mut b_inbound = b.inbound;
    tokio::spawn(async move { while b_inbound.recv().await.is_some() {} });
    let source = PeerSource {
        net: b.handle.clone(),
        peer: a_id,
    };
    let cpu = || proc_stat(std::process::id()).1 as f64 / 100.0;
    // Wall-clock marks of the mesh phase, to cut a `perf record -k realtime`
    // profile down to it (`perf report --time START,END`).
    let mark = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let mesh_start = mark();
    let drops = udp_rcvbuf_errors();
    let (t, c) = (std::time::Instant::now(), cpu());
    let report = fetch_content(
        &store_b,
        sealed.manifest_id,
        &source,
        &FetchOptions {
            max_in_flight: std::env::var("MEASURE_IN_FLIGHT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(FetchOptions::default().max_in_flight),
            ..FetchOptions::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    let (mesh_secs, mesh_cpu) = (t.elapsed().as_secs_f64(), cpu() - c);
    let mesh_drops = udp_rcvbuf_errors().saturating_sub(drops);
    eprintln!(
        "MEASURE mesh phase (wall clock): {mesh_start:.6},{:.6}",
        mark()
    );
    let sealed_bytes = sealed.manifest.total_size;
    let gib = sealed_bytes as f64 / f64::from(1u32 << 30);
    let mesh_rate = sealed_bytes as f64 / mesh_secs;
    let (c, drops) = (cpu(), udp_rcvbuf_errors());
    let quic_rate = plain_quic_transfer(sealed_bytes, None).await;
    let (quic_cpu, quic_drops) = (cpu() - c, udp_rcvbuf_errors().saturating_sub(drops));
    eprintln!(
        "MEASURE UDP datagrams dropped for a full receive buffer: mesh {mesh_drops}, plain quinn {quic_drops}"
    );
    let c = cpu();
    let files_rate = plain_quic_transfer(sealed_bytes, Some(dir.path().join("plain"))).await;
    let files_cpu = cpu() - c;
    eprintln!(
        "MEASURE {gib:.2} GiB sealed input, {} chunks: sealing {:.1} s ({:.0} MB/s); mesh transfer {:.1} s = {:.0} MB/s ({:.1} CPU s/GiB); plain quinn {:.0} MB/s ({:.1} CPU s/GiB): ratio {:.2}; plain quinn into synced 1 MiB files {:.0} MB/s ({:.1} CPU s/GiB): ratio {:.2}",
        report.chunks_fetched,
        seal_secs,
        size as f64 / seal_secs / 1e6,
        mesh_secs,
        mesh_rate / 1e6,
        mesh_cpu / gib,
        quic_rate / 1e6,
        quic_cpu / gib,
        mesh_rate / quic_rate,
        files_rate / 1e6,
        files_cpu / gib,
        mesh_rate / files_rate,
    );
    let (raw_rate, raw_cpu) = raw_libp2p_streams(sealed_bytes).await;
    eprintln!(
        "MEASURE raw libp2p streams, memory to memory (no store, no hashing): {:.0} MB/s ({:.1} CPU s/GiB): {:.2} of plain quinn; the mesh is {:.2} of it",
        raw_rate / 1e6,
        raw_cpu / gib,
        raw_rate / quic_rate,
        mesh_rate / raw_rate,
    );
    let _ = a.handle.shutdown().await;
    let _ = b.handle.shutdown().await;
}
