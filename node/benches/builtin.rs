//! The builtin renderer's speed: the benchmark frame (the default scene,
//! 320 × 180, one thread) per second. Run: `cargo bench -p rendertrust-node --bench builtin`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rendertrust_node::runtime::builtin;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("builtin");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    g.bench_function("benchmark_frame_320x180_1thread", |b| {
        b.iter(|| std::hint::black_box(builtin::benchmark_frame()))
    });
    let scene = builtin::Scene::parse(builtin::DEFAULT_SCENE).map_err(|e| e.to_string());
    if let Ok(scene) = scene {
        let png = builtin::render_rgb(
            &scene,
            0,
            builtin::BENCH_WIDTH,
            builtin::BENCH_HEIGHT,
            rendertrust_protocol::task::Rect::full(builtin::BENCH_WIDTH, builtin::BENCH_HEIGHT),
            &builtin::Control::all_cores(),
        );
        if let Ok(r) = png {
            g.bench_function("encode_png_320x180", |b| {
                b.iter(|| {
                    std::hint::black_box(builtin::encode_png(
                        &r.rgb,
                        builtin::BENCH_WIDTH,
                        builtin::BENCH_HEIGHT,
                    ))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
