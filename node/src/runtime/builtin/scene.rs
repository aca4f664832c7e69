//! The builtin renderer's scene format: TOML, parsed strictly and bounded.
//!
//! # What this module owns
//!
//! Turning scene text (a job's input 0, or [`super::DEFAULT_SCENE`]) into a
//! validated [`Scene`], with errors that name the field and say what was
//! expected and what was found. Every number is checked to be finite and in
//! range, so the tracer never meets a NaN it did not make itself.
//!
//! # The format
//!
//! ```toml
//! [render]
//! samples = 16          # samples per pixel, 1..=4096
//! max_bounces = 4       # path length, 1..=32
//!
//! [sky]                 # optional: light from everywhere a ray escapes to
//! horizon = [1.0, 1.0, 1.0]
//! zenith = [0.5, 0.7, 1.0]
//!
//! [camera]
//! look_from = [0, 1.5, 6]
//! look_at = [0, 0.5, 0]
//! up = [0, 1, 0]                # optional, default +y
//! vfov_deg = 40                 # vertical field of view, (0, 179]
//! orbit_deg_per_frame = 3.0     # optional: the camera circles look_at about +y
//!
//! [[material]]
//! name = "ground"
//! kind = "diffuse"              # diffuse | metal | emissive
//! color = [0.8, 0.8, 0.8]       # each channel in 0..=1
//! checker = [0.2, 0.2, 0.2]     # diffuse only: second colour of a world x/z checkerboard
//! checker_size = 1.0            # diffuse only, with checker
//! # fuzz = 0.1                  # metal only, 0..=1
//! # strength = 4.0              # emissive only, (0, 1000]
//!
//! [[sphere]]
//! center = [0, 1, 0]
//! radius = 1.0
//! material = "ground"
//!
//! [[plane]]
//! point = [0, 0, 0]
//! normal = [0, 1, 0]
//! material = "ground"
//! ```
//!
//! Bounds: text ≤ [`MAX_SCENE_BYTES`], ≤ [`MAX_MATERIALS`] materials,
//! ≤ [`MAX_SPHERES`] spheres, ≤ [`MAX_PLANES`] planes, at least one object,
//! coordinates within ±[`MAX_COORD`]. Unknown keys are errors (a typo must not
//! silently render a different picture).
//!
//! # What it must not do
//!
//! No rendering and no I/O: it only parses and validates.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::trace::V3;

/// Largest scene text accepted, bytes.
pub const MAX_SCENE_BYTES: usize = 64 * 1024;
/// Most materials in a scene.
pub const MAX_MATERIALS: usize = 64;
/// Most spheres in a scene.
pub const MAX_SPHERES: usize = 256;
/// Most planes in a scene.
pub const MAX_PLANES: usize = 16;
/// Most samples per pixel.
pub const MAX_SAMPLES: u32 = 4096;
/// Most bounces per path.
pub const MAX_BOUNCES: u32 = 32;
/// Largest absolute coordinate, radius or checker size.
pub const MAX_COORD: f64 = 1.0e6;
/// Largest emissive strength.
pub const MAX_STRENGTH: f64 = 1000.0;

/// Why scene text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SceneError {
    /// The text is longer than [`MAX_SCENE_BYTES`].
    #[error("scene is {len} bytes; at most {max} accepted")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Not valid TOML, or not the expected shape (unknown key, wrong type).
    #[error("scene is not valid: {0}")]
    Toml(String),
    /// Valid TOML, but a value is out of range or inconsistent.
    #[error("scene field `{field}`: {reason}")]
    Invalid {
        /// The field, e.g. `sphere[2].radius`.
        field: String,
        /// What was expected and what was found.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SceneError {
    SceneError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SceneFile {
    render: RenderDef,
    #[serde(default)]
    sky: Option<SkyDef>,
    camera: CameraFile,
    #[serde(default)]
    material: Vec<MaterialFile>,
    #[serde(default)]
    sphere: Vec<SphereFile>,
    #[serde(default)]
    plane: Vec<PlaneFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderDef {
    samples: u32,
    max_bounces: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkyDef {
    horizon: [f64; 3],
    zenith: [f64; 3],
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraFile {
    look_from: [f64; 3],
    look_at: [f64; 3],
    #[serde(default)]
    up: Option<[f64; 3]>,
    vfov_deg: f64,
    #[serde(default)]
    orbit_deg_per_frame: f64,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum KindFile {
    Diffuse,
    Metal,
    Emissive,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaterialFile {
    name: String,
    kind: KindFile,
    color: [f64; 3],
    #[serde(default)]
    checker: Option<[f64; 3]>,
    #[serde(default)]
    checker_size: Option<f64>,
    #[serde(default)]
    fuzz: Option<f64>,
    #[serde(default)]
    strength: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SphereFile {
    center: [f64; 3],
    radius: f64,
    material: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaneFile {
    point: [f64; 3],
    normal: [f64; 3],
    material: String,
}

/// A surface's material.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Material {
    /// Lambertian; optional world x/z checkerboard between `color` and `checker.0`.
    Diffuse {
        color: V3,
        checker: Option<(V3, f64)>,
    },
    /// Mirror with `fuzz` (0: perfect mirror).
    Metal { color: V3, fuzz: f64 },
    /// Emits `color × strength`, scatters nothing.
    Emissive { emit: V3 },
}

/// A sphere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sphere {
    pub(crate) center: V3,
    pub(crate) radius: f64,
    pub(crate) material: usize,
}

/// An infinite plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plane {
    pub(crate) point: V3,
    /// Unit normal.
    pub(crate) normal: V3,
    pub(crate) material: usize,
}

/// The camera as the scene describes it (frame 0); [`super::trace::Camera`]
/// places it for a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CameraDef {
    pub(crate) look_from: V3,
    pub(crate) look_at: V3,
    pub(crate) up: V3,
    pub(crate) vfov_deg: f64,
    pub(crate) orbit_deg_per_frame: f64,
}

/// A validated scene, ready to render.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub(crate) samples: u32,
    pub(crate) max_bounces: u32,
    pub(crate) sky_horizon: V3,
    pub(crate) sky_zenith: V3,
    pub(crate) camera: CameraDef,
    pub(crate) materials: Vec<Material>,
    pub(crate) spheres: Vec<Sphere>,
    pub(crate) planes: Vec<Plane>,
    /// Seeds every pixel's random numbers: the first 8 bytes (LE) of the
    /// BLAKE3 of the scene text, so any edit changes the noise, and the same
    /// text renders the same bytes.
    pub(crate) seed: u64,
}

impl Scene {
    /// Samples per pixel.
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// Parses and validates scene text.
    pub fn parse(text: &str) -> Result<Scene, SceneError> {
        if text.len() > MAX_SCENE_BYTES {
            return Err(SceneError::TooLarge {
                len: text.len(),
                max: MAX_SCENE_BYTES,
            });
        }
        let file: SceneFile = toml::from_str(text).map_err(|e| SceneError::Toml(e.to_string()))?;
        let hash = blake3::hash(text.as_bytes());
        let mut seed_bytes = [0u8; 8];
        seed_bytes.copy_from_slice(&hash.as_bytes()[..8]);
        build(file, u64::from_le_bytes(seed_bytes))
    }
}

fn finite(field: &str, v: f64, min: f64, max: f64) -> Result<f64, SceneError> {
    if v.is_finite() && v >= min && v <= max {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("expected a number in {min}..={max}, found {v}"),
        ))
    }
}

fn vec3(field: &str, v: [f64; 3], min: f64, max: f64) -> Result<V3, SceneError> {
    Ok(V3::new(
        finite(field, v[0], min, max)?,
        finite(field, v[1], min, max)?,
        finite(field, v[2], min, max)?,
    ))
}

fn point(field: &str, v: [f64; 3]) -> Result<V3, SceneError> {
    vec3(field, v, -MAX_COORD, MAX_COORD)
}

fn color(field: &str, v: [f64; 3]) -> Result<V3, SceneError> {
    vec3(field, v, 0.0, 1.0)
}

fn unit(field: &str, v: [f64; 3]) -> Result<V3, SceneError> {
    let v = point(field, v)?;
    if v.length_squared() < 1e-12 {
        return Err(invalid(
            field,
            "expected a non-zero direction, found (0, 0, 0)",
        ));
    }
    Ok(v.unit())
}

fn build(f: SceneFile, seed: u64) -> Result<Scene, SceneError> {
    if !(1..=MAX_SAMPLES).contains(&f.render.samples) {
        return Err(invalid(
            "render.samples",
            format!("expected 1..={MAX_SAMPLES}, found {}", f.render.samples),
        ));
    }
    if !(1..=MAX_BOUNCES).contains(&f.render.max_bounces) {
        return Err(invalid(
            "render.max_bounces",
            format!("expected 1..={MAX_BOUNCES}, found {}", f.render.max_bounces),
        ));
    }
    let (sky_horizon, sky_zenith) = match &f.sky {
        Some(s) => (
            color("sky.horizon", s.horizon)?,
            color("sky.zenith", s.zenith)?,
        ),
        None => (V3::new(0.0, 0.0, 0.0), V3::new(0.0, 0.0, 0.0)),
    };
    let c = &f.camera;
    let look_from = point("camera.look_from", c.look_from)?;
    let look_at = point("camera.look_at", c.look_at)?;
    if (look_from - look_at).length_squared() < 1e-12 {
        return Err(invalid(
            "camera.look_at",
            "expected a point different from camera.look_from",
        ));
    }
    let up = unit("camera.up", c.up.unwrap_or([0.0, 1.0, 0.0]))?;
    let camera = CameraDef {
        look_from,
        look_at,
        up,
        vfov_deg: finite("camera.vfov_deg", c.vfov_deg, 1e-3, 179.0)?,
        orbit_deg_per_frame: finite(
            "camera.orbit_deg_per_frame",
            c.orbit_deg_per_frame,
            -360.0,
            360.0,
        )?,
    };

    if f.material.len() > MAX_MATERIALS {
        return Err(invalid(
            "material",
            format!(
                "at most {MAX_MATERIALS} materials, found {}",
                f.material.len()
            ),
        ));
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut materials = Vec::with_capacity(f.material.len());
    for (i, m) in f.material.iter().enumerate() {
        let field = |k: &str| format!("material[{i}].{k}");
        if m.name.is_empty() || m.name.len() > 64 {
            return Err(invalid(
                field("name"),
                format!("expected 1..=64 bytes, found {}", m.name.len()),
            ));
        }
        if names.insert(&m.name, i).is_some() {
            return Err(invalid(
                field("name"),
                format!("`{}` is already the name of another material", m.name),
            ));
        }
        let col = color(&field("color"), m.color)?;
        let only = |present: bool, key: &str, kind: &str| {
            if present {
                Err(invalid(
                    field(key),
                    format!("only {kind} materials take `{key}`"),
                ))
            } else {
                Ok(())
            }
        };
        let mat = match m.kind {
            KindFile::Diffuse => {
                only(m.fuzz.is_some(), "fuzz", "metal")?;
                only(m.strength.is_some(), "strength", "emissive")?;
                let checker = match (m.checker, m.checker_size) {
                    (Some(c2), size) => Some((
                        color(&field("checker"), c2)?,
                        finite(&field("checker_size"), size.unwrap_or(1.0), 1e-3, MAX_COORD)?,
                    )),
                    (None, Some(_)) => {
                        return Err(invalid(
                            field("checker_size"),
                            "`checker_size` needs `checker` (the second colour)",
                        ));
                    }
                    (None, None) => None,
                };
                Material::Diffuse {
                    color: col,
                    checker,
                }
            }
            KindFile::Metal => {
                only(m.checker.is_some(), "checker", "diffuse")?;
                only(m.checker_size.is_some(), "checker_size", "diffuse")?;
                only(m.strength.is_some(), "strength", "emissive")?;
                Material::Metal {
                    color: col,
                    fuzz: finite(&field("fuzz"), m.fuzz.unwrap_or(0.0), 0.0, 1.0)?,
                }
            }
            KindFile::Emissive => {
                only(m.checker.is_some(), "checker", "diffuse")?;
                only(m.checker_size.is_some(), "checker_size", "diffuse")?;
                only(m.fuzz.is_some(), "fuzz", "metal")?;
                let s = finite(
                    &field("strength"),
                    m.strength.unwrap_or(1.0),
                    1e-6,
                    MAX_STRENGTH,
                )?;
                Material::Emissive { emit: col * s }
            }
        };
        materials.push(mat);
    }
    let material = |field: String, name: &str| {
        names.get(name).copied().ok_or_else(|| {
            invalid(
                field,
                format!("no material is named `{name}` (define it in a [[material]] table)"),
            )
        })
    };

    if f.sphere.len() > MAX_SPHERES {
        return Err(invalid(
            "sphere",
            format!("at most {MAX_SPHERES} spheres, found {}", f.sphere.len()),
        ));
    }
    if f.plane.len() > MAX_PLANES {
        return Err(invalid(
            "plane",
            format!("at most {MAX_PLANES} planes, found {}", f.plane.len()),
        ));
    }
    if f.sphere.is_empty() && f.plane.is_empty() {
        return Err(invalid(
            "sphere",
            "expected at least one sphere or plane, found none",
        ));
    }
    let mut spheres = Vec::with_capacity(f.sphere.len());
    for (i, s) in f.sphere.iter().enumerate() {
        spheres.push(Sphere {
            center: point(&format!("sphere[{i}].center"), s.center)?,
            radius: finite(&format!("sphere[{i}].radius"), s.radius, 1e-6, MAX_COORD)?,
            material: material(format!("sphere[{i}].material"), &s.material)?,
        });
    }
    let mut planes = Vec::with_capacity(f.plane.len());
    for (i, p) in f.plane.iter().enumerate() {
        planes.push(Plane {
            point: point(&format!("plane[{i}].point"), p.point)?,
            normal: unit(&format!("plane[{i}].normal"), p.normal)?,
            material: material(format!("plane[{i}].material"), &p.material)?,
        });
    }
    Ok(Scene {
        samples: f.render.samples,
        max_bounces: f.render.max_bounces,
        sky_horizon,
        sky_zenith,
        camera,
        materials,
        spheres,
        planes,
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[render]
samples = 2
max_bounces = 2
[camera]
look_from = [0, 1, 5]
look_at = [0, 0, 0]
vfov_deg = 40
[[material]]
name = "m"
kind = "diffuse"
color = [0.5, 0.5, 0.5]
[[sphere]]
center = [0, 0, 0]
radius = 1
material = "m"
"#;

    fn err(text: &str) -> SceneError {
        Scene::parse(text).unwrap_err()
    }

    fn field_of(e: &SceneError) -> &str {
        match e {
            SceneError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn minimal_and_default_scenes_parse() {
        let s = Scene::parse(MINIMAL).unwrap();
        assert_eq!(s.samples, 2);
        assert_eq!(s.spheres.len(), 1);
        assert_eq!(s.camera.up, V3::new(0.0, 1.0, 0.0));
        Scene::parse(super::super::DEFAULT_SCENE).unwrap();
    }

    #[test]
    fn seed_follows_the_text() {
        let a = Scene::parse(MINIMAL).unwrap();
        let b = Scene::parse(&format!("{MINIMAL}\n# a comment\n")).unwrap();
        assert_ne!(a.seed, b.seed);
        assert_eq!(a.seed, Scene::parse(MINIMAL).unwrap().seed);
    }

    #[test]
    fn rejections_name_the_field() {
        assert!(matches!(
            err(&"#".repeat(MAX_SCENE_BYTES + 1)),
            SceneError::TooLarge { .. }
        ));
        assert!(matches!(err("not toml ["), SceneError::Toml(_)));
        // unknown key
        let e = err(&MINIMAL.replace("radius = 1", "radius = 1\nradios = 2"));
        assert!(
            matches!(&e, SceneError::Toml(m) if m.contains("radios")),
            "{e}"
        );
        let cases: &[(&str, &str, &str)] = &[
            ("samples = 2", "samples = 0", "render.samples"),
            ("samples = 2", "samples = 5000", "render.samples"),
            ("max_bounces = 2", "max_bounces = 33", "render.max_bounces"),
            ("radius = 1", "radius = 0", "sphere[0].radius"),
            ("radius = 1", "radius = -1", "sphere[0].radius"),
            ("radius = 1", "radius = nan", "sphere[0].radius"),
            ("radius = 1", "radius = inf", "sphere[0].radius"),
            (
                "center = [0, 0, 0]",
                "center = [0, 2e6, 0]",
                "sphere[0].center",
            ),
            ("material = \"m\"", "material = \"x\"", "sphere[0].material"),
            (
                "color = [0.5, 0.5, 0.5]",
                "color = [1.5, 0.5, 0.5]",
                "material[0].color",
            ),
            ("vfov_deg = 40", "vfov_deg = 180", "camera.vfov_deg"),
            (
                "look_at = [0, 0, 0]",
                "look_at = [0, 1, 5]",
                "camera.look_at",
            ),
            (
                "kind = \"diffuse\"",
                "kind = \"diffuse\"\nfuzz = 0.5",
                "material[0].fuzz",
            ),
            (
                "kind = \"diffuse\"",
                "kind = \"metal\"\nfuzz = 2",
                "material[0].fuzz",
            ),
            (
                "kind = \"diffuse\"",
                "kind = \"emissive\"\nstrength = 0",
                "material[0].strength",
            ),
            (
                "kind = \"diffuse\"",
                "kind = \"diffuse\"\nchecker_size = 1",
                "material[0].checker_size",
            ),
        ];
        for (from, to, field) in cases {
            let text = MINIMAL.replace(from, to);
            assert_ne!(text, MINIMAL, "{from}");
            let e = err(&text);
            assert_eq!(field_of(&e), *field, "{to}: {e}");
        }
        // no objects
        let none = MINIMAL.replace(
            "[[sphere]]\ncenter = [0, 0, 0]\nradius = 1\nmaterial = \"m\"\n",
            "",
        );
        assert_eq!(field_of(&err(&none)), "sphere");
        // duplicate material
        let dup = MINIMAL.replace(
            "[[sphere]]",
            "[[material]]\nname = \"m\"\nkind = \"metal\"\ncolor = [1, 1, 1]\n[[sphere]]",
        );
        assert_eq!(field_of(&err(&dup)), "material[1].name");
        // too many spheres
        let mut many = MINIMAL.to_owned();
        for _ in 0..MAX_SPHERES {
            many.push_str("[[sphere]]\ncenter = [0, 0, 0]\nradius = 1\nmaterial = \"m\"\n");
        }
        assert_eq!(field_of(&err(&many)), "sphere");
    }
}
