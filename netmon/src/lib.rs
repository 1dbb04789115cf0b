//! netmon: an eBPF TCP connection tracer. The binary is a thin shell over these modules.
//!
//! Data flows kernel -> [`attach`] (the loaded program and its ring buffer) -> [`decode`]
//! (typed transitions) -> [`table`] (per-socket state) -> [`output`] (text or JSON Lines);
//! [`watch`] runs that loop; [`cli`] parses arguments; [`offsets`] resolves the kernel struct
//! layout from BTF for the program.

pub mod agent;
pub mod attach;
pub mod cgroup;
pub mod cli;
pub mod columns;
pub mod count;
pub mod decode;
pub mod diag_ext;
pub mod filter;
pub mod hosts;
pub mod netns;
pub mod offsets;
pub mod output;
pub mod procfs;
pub mod snapshot;
pub mod sock_diag;
pub mod sockstat;
pub mod table;
pub mod watch;
