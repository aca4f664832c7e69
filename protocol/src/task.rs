//! Task geometry: which frame, and which region of it, task `index` of a job
//! renders.
//!
//! # What this module owns
//!
//! The one mapping from a job's [`SplitRule`] and image size to tasks, used
//! by the scheduler (how many tasks, what each is), by runtimes (what to
//! render) and by verification (a crop is a region too). Tiles cut the frame
//! into `cols × rows` rectangles with integer edges
//! `x_k = k · width / cols` (and likewise for rows, counted from the top), so
//! tiles never overlap, cover the frame exactly, and differ in size by at
//! most one pixel.
//!
//! It also names the seal and key-wrap *contexts* of a job's data
//! ([`input_context`], [`output_context`], [`job_key_context`],
//! [`output_key_context`]): both peers must bind the same bytes, and each
//! context differs by domain, so a sealed input can never be opened as an
//! output, nor a wrapped output key as a job key.
//!
//! # What it must not do
//!
//! No I/O; it only computes.

use serde::{Deserialize, Serialize};

use crate::wire::{JobId, SplitRule, TaskId};

/// Seal context of a job's input `name`: what a creator seals the input
/// with and a worker opens it with (domain | job id | name).
pub fn input_context(job: &JobId, name: &str) -> Vec<u8> {
    let mut c = b"rendertrust input v1\0".to_vec();
    c.extend_from_slice(&job.0);
    c.extend_from_slice(name.as_bytes());
    c
}

/// Seal context of a task attempt's output (domain | job id | index | attempt).
pub fn output_context(task: &TaskId, attempt: u32) -> Vec<u8> {
    let mut c = b"rendertrust output v1\0".to_vec();
    c.extend_from_slice(&task.job.0);
    c.extend_from_slice(&task.index.to_le_bytes());
    c.extend_from_slice(&attempt.to_le_bytes());
    c
}

/// Key-wrap context of a job key sent to a worker (domain | job id).
pub fn job_key_context(job: &JobId) -> Vec<u8> {
    let mut c = b"rendertrust job key v1\0".to_vec();
    c.extend_from_slice(&job.0);
    c
}

/// Key-wrap context of an output key sent to the creator (domain | job id | index | attempt).
pub fn output_key_context(task: &TaskId, attempt: u32) -> Vec<u8> {
    let mut c = b"rendertrust output key v1\0".to_vec();
    c.extend_from_slice(&task.job.0);
    c.extend_from_slice(&task.index.to_le_bytes());
    c.extend_from_slice(&attempt.to_le_bytes());
    c
}

/// A rectangle of pixels in a `width × height` frame; `y` counts from the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width (≥ 1).
    pub w: u32,
    /// Height (≥ 1).
    pub h: u32,
}

impl Rect {
    /// The whole `width × height` frame.
    pub const fn full(width: u32, height: u32) -> Rect {
        Rect {
            x: 0,
            y: 0,
            w: width,
            h: height,
        }
    }

    /// Number of pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }

    /// Whether the rectangle lies inside a `width × height` frame and is not empty.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        self.w > 0
            && self.h > 0
            && u64::from(self.x) + u64::from(self.w) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.h) <= u64::from(height)
    }

    /// Whether the rectangle is not empty and lies inside `outer` (e.g. a
    /// spot-check crop inside its task's region: the rule both the worker
    /// taking a crop offer and the creator comparing crops apply).
    pub fn within(&self, outer: &Rect) -> bool {
        self.w > 0
            && self.h > 0
            && self.x >= outer.x
            && self.y >= outer.y
            && u64::from(self.x) + u64::from(self.w) <= u64::from(outer.x) + u64::from(outer.w)
            && u64::from(self.y) + u64::from(self.h) <= u64::from(outer.y) + u64::from(outer.h)
    }
}

/// What one task renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskGeometry {
    /// Frame number.
    pub frame: u32,
    /// Region of the frame (the whole frame for frame splits).
    pub region: Rect,
}

/// The geometry of task `index` of a job split by `split` into frames of
/// `width × height`; `None` when `index` is out of range or the split does
/// not fit the frame (more tile columns than pixels, a zero step).
pub fn task_geometry(
    split: &SplitRule,
    width: u32,
    height: u32,
    index: u32,
) -> Option<TaskGeometry> {
    if width == 0 || height == 0 || u64::from(index) >= split.task_count() {
        return None;
    }
    match *split {
        SplitRule::Frames { start, step, .. } => {
            let frame = u64::from(start) + u64::from(index) * u64::from(step);
            Some(TaskGeometry {
                frame: u32::try_from(frame).ok()?,
                region: Rect::full(width, height),
            })
        }
        SplitRule::Tiles { frame, cols, rows } => {
            let (cols, rows) = (u32::from(cols), u32::from(rows));
            if cols == 0 || rows == 0 || cols > width || rows > height {
                return None;
            }
            let (col, row) = (index % cols, index / cols);
            let edge =
                |k: u32, n: u32, len: u32| (u64::from(k) * u64::from(len) / u64::from(n)) as u32;
            let (x0, x1) = (edge(col, cols, width), edge(col + 1, cols, width));
            let (y0, y1) = (edge(row, rows, height), edge(row + 1, rows, height));
            Some(TaskGeometry {
                frame,
                region: Rect {
                    x: x0,
                    y: y0,
                    w: x1 - x0,
                    h: y1 - y0,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_step_through_the_range() {
        let s = SplitRule::Frames {
            start: 10,
            end: 20,
            step: 5,
        };
        let f: Vec<u32> = (0..4)
            .filter_map(|i| task_geometry(&s, 64, 32, i))
            .map(|g| g.frame)
            .collect();
        assert_eq!(f, vec![10, 15, 20]);
        assert_eq!(
            task_geometry(&s, 64, 32, 0).unwrap().region,
            Rect::full(64, 32)
        );
    }

    #[test]
    fn tiles_that_do_not_fit_are_refused() {
        let s = SplitRule::Tiles {
            frame: 1,
            cols: 5,
            rows: 1,
        };
        assert!(task_geometry(&s, 4, 4, 0).is_none());
        assert!(task_geometry(&s, 5, 4, 0).is_some());
    }

    #[test]
    fn a_crop_is_within_a_region_only_whole_and_not_empty() {
        let region = Rect {
            x: 10,
            y: 20,
            w: 30,
            h: 40,
        };
        assert!(region.within(&region));
        assert!(
            Rect {
                x: 39,
                y: 59,
                w: 1,
                h: 1
            }
            .within(&region)
        );
        for bad in [
            Rect {
                x: 9,
                y: 20,
                w: 5,
                h: 5,
            },
            Rect {
                x: 10,
                y: 19,
                w: 5,
                h: 5,
            },
            Rect {
                x: 36,
                y: 20,
                w: 5,
                h: 5,
            },
            Rect {
                x: 10,
                y: 56,
                w: 5,
                h: 5,
            },
            Rect {
                x: 12,
                y: 22,
                w: 0,
                h: 5,
            },
            Rect {
                x: 12,
                y: 22,
                w: 5,
                h: 0,
            },
            Rect {
                x: u32::MAX,
                y: 22,
                w: u32::MAX,
                h: 5,
            },
        ] {
            assert!(!bad.within(&region), "{bad:?}");
        }
    }

    proptest! {
        /// `within` agrees with pixel membership: every pixel of a crop
        /// within a region is in the region, and a crop not within it has a
        /// pixel outside (or no pixel at all).
        #[test]
        fn within_means_every_pixel_is_inside(
            (ox, oy, ow, oh) in (0u32..20, 0u32..20, 1u32..20, 1u32..20),
            (x, y, w, h) in (0u32..45, 0u32..45, 0u32..20, 0u32..20),
        ) {
            let outer = Rect { x: ox, y: oy, w: ow, h: oh };
            let crop = Rect { x, y, w, h };
            let inside = |px: u32, py: u32| px >= ox && px < ox + ow && py >= oy && py < oy + oh;
            let all = (x..x + w).all(|px| (y..y + h).all(|py| inside(px, py)));
            prop_assert_eq!(crop.within(&outer), w > 0 && h > 0 && all);
        }

        #[test]
        fn tiles_cover_the_frame_exactly_once(w in 1u32..300, h in 1u32..300, cols in 1u16..12, rows in 1u16..12) {
            prop_assume!(u32::from(cols) <= w && u32::from(rows) <= h);
            let s = SplitRule::Tiles { frame: 3, cols, rows };
            let mut covered = vec![0u8; (w * h) as usize];
            for i in 0..u32::from(cols) * u32::from(rows) {
                let g = task_geometry(&s, w, h, i).unwrap();
                prop_assert_eq!(g.frame, 3);
                prop_assert!(g.region.fits(w, h));
                for y in g.region.y..g.region.y + g.region.h {
                    for x in g.region.x..g.region.x + g.region.w {
                        covered[(y * w + x) as usize] += 1;
                    }
                }
            }
            prop_assert!(covered.iter().all(|c| *c == 1));
            prop_assert!(task_geometry(&s, w, h, u32::from(cols) * u32::from(rows)).is_none());
        }
    }
}
