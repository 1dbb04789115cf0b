//! netmon: an eBPF TCP connection tracer. The binary is a thin shell over these modules.
//!
//! Data flows kernel -> [`attach`] (the loaded program and its ring buffer) -> [`tracer`] (the
//! one event loop: [`decode`], [`table`], losses) -> consumers: [`watch`] (printed by
//! [`output`]) and [`agent`] (snapshots assembled by [`source`], rendered by [`snapshot`],
//! sent as [`wire`] frames); [`cli`] parses arguments; [`offsets`] resolves the kernel struct
//! layout from BTF for the program; [`features`] says which optional hooks the kernel has;
//! [`clones`] repairs the identity of new children on kernels that report them early.

pub mod access;
pub mod activation;
pub mod agent;
pub mod agent_socket;
pub mod allocator;
pub mod attach;
pub mod budget;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod clones;
pub mod columns;
pub mod config;
pub mod count;
pub mod decode;
pub mod diag_ext;
pub mod docs;
pub mod escape;
pub mod export;
pub mod features;
pub mod filter;
pub mod fires;
#[cfg(test)]
mod heap;
pub mod hosts;
pub mod iter;
pub mod metrics;
pub mod netns;
pub mod offsets;
pub mod otlp;
pub mod output;
pub mod peer;
pub mod privileges;
pub mod procfs;
pub mod records;
pub mod reply;
pub mod served;
pub mod slots;
pub mod snapshot;
pub mod sock_diag;
pub mod sockstat;
pub mod source;
pub mod stop;
pub mod table;
pub mod top;
pub mod tracer;
pub mod watch;
pub mod wire;
