//! Placeholder: the scheduler machine (being written).
