//! Task runtimes. Each runtime turns a task into output files; the node
//! hashes, seals and signs what they produce. Runtimes do not sign anything.

pub mod builtin;
