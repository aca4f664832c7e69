//! Writes the fuzz seed corpus: `cargo run -p rendertrust-protocol --example fuzz_seeds [DIR]`
//! (default `fuzz/seeds`). One file per seed, `DIR/<target>/seed-NNN`.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("fuzz")
                .join("seeds")
        });
    let seeds = rendertrust_protocol::fuzz::seeds();
    for (i, (target, data)) in seeds.iter().enumerate() {
        let sub = dir.join(target);
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("seed-{i:03}")), data)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), dir.display());
    Ok(())
}
