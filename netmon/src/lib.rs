//! netmon: an eBPF TCP connection tracer. The binary is a thin shell over these modules.
//!
//! Data flows kernel -> [`attach`] (the loaded program and its ring buffer) -> [`decode`]
//! (typed transitions) -> [`table`] (per-socket state) -> [`output`] (text or JSON Lines);
//! [`watch`] runs that loop; [`cli`] parses arguments; [`offsets`] resolves the kernel struct
//! layout from BTF for the program.

pub mod activation;
pub mod agent;
pub mod attach;
pub mod cli;
pub mod config;
pub mod decode;
pub mod docs;
pub mod filter;
pub mod netns;
pub mod offsets;
pub mod output;
pub mod privileges;
pub mod procfs;
pub mod snapshot;
pub mod sock_diag;
pub mod table;
pub mod watch;
