//! Empty on purpose: see the `[lib]` note in Cargo.toml. The program is `src/main.rs`.
#![no_std]
