//! Resolves, from the running kernel's BTF, the struct field offsets the eBPF program reads.
//!
//! Rust eBPF has no CO-RE relocations, so the program cannot name `sk->__sk_common.skc_family`;
//! userspace looks the offsets up in /sys/kernel/btf/vmlinux and hands them to the program as a
//! global ([`netmon_common::SockOffsets`]) before it is loaded.

use std::path::Path;

use btf_rs::{Btf, Type};
use netmon_common::{CGROUP_MODE_SOCKET, CGROUP_MODE_TASK, IterOffsets, SockOffsets};

use crate::features::Support;

/// Where the kernel publishes its own BTF (CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF from {path} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Read { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct `{name}`")]
    NoStruct { name: String },
    #[error("kernel BTF: struct `{strukt}` has no field `{field}`")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: `{strukt}.{field}` is {found}, netmon expects {expected}")]
    Shape {
        strukt: String,
        field: String,
        found: String,
        expected: String,
    },
    #[error("kernel BTF lookup failed")]
    Btf(#[from] btf_rs::Error),
}

/// Reads the kernel's BTF and resolves every offset the program needs (~100 ms here).
pub fn from_kernel() -> Result<SockOffsets, OffsetError> {
    from_file(Path::new(VMLINUX_BTF))
}

pub fn from_file(path: &Path) -> Result<SockOffsets, OffsetError> {
    resolve(&read_btf(path)?)
}

/// Everything netmon reads from the kernel's BTF, from one parse. btf_rs holds ~40 MB while
/// the kernel's BTF is parsed (measured: an agent's RSS 4.7 -> 44.6 MB, back to 17.8 once
/// dropped); the agent loads both the tracer and the iterator, and parsing once, before it
/// holds anything else, keeps that moment the lowest its memory will ever peak at.
pub struct Layout {
    pub sock: Result<SockOffsets, OffsetError>,
    pub support: Support,
    /// The `iter/tcp` program's offsets (see [`resolve_iter`]).
    pub iter: Result<(IterOffsets, u8), OffsetError>,
}

impl Layout {
    pub fn from_kernel() -> Result<Self, OffsetError> {
        let btf = kernel_btf()?;
        Ok(Self {
            sock: resolve(&btf),
            support: Support::probe(&btf),
            iter: resolve_iter(&btf),
        })
    }
}

/// Parses the running kernel's BTF, for callers that look up more than the offsets.
pub fn kernel_btf() -> Result<Btf, OffsetError> {
    read_btf(Path::new(VMLINUX_BTF))
}

fn read_btf(path: &Path) -> Result<Btf, OffsetError> {
    Btf::from_file(path).map_err(|source| OffsetError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Whether struct `strukt` has the member `path` (of any size).
pub fn has_field(btf: &Btf, strukt: &str, path: &[&str]) -> bool {
    field_offset(btf, strukt, path, 0).is_ok()
}

/// Resolves the offsets; each field's size is checked so that a kernel whose layout changed
/// fails here with a message instead of producing wrong events.
pub fn resolve(btf: &Btf) -> Result<SockOffsets, OffsetError> {
    let common = |field: &str, size: usize| field_offset(btf, "sock_common", &[field], size);
    // `struct sock` and `struct inet_sock` start with `__sk_common` / `sk`.
    let must_be_zero = [
        field_offset(btf, "sock", &["__sk_common"], 0)?,
        field_offset(btf, "inet_sock", &["sk"], 0)?,
    ];
    if must_be_zero != [0, 0] {
        return Err(OffsetError::Shape {
            strukt: "sock".into(),
            field: "__sk_common".into(),
            found: format!("at offsets {must_be_zero:?}"),
            expected: "offset 0".into(),
        });
    }
    Ok(SockOffsets {
        skc_daddr: common("skc_daddr", 4)?,
        skc_rcv_saddr: common("skc_rcv_saddr", 4)?,
        skc_dport: common("skc_dport", 2)?,
        skc_family: common("skc_family", 2)?,
        skc_v6_daddr: common("skc_v6_daddr", 16)?,
        skc_v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
        skc_net: common("skc_net", 8)?,
        net_ns_inum: field_offset(btf, "net", &["ns", "inum"], 4)?,
        sk_protocol: field_offset(btf, "sock", &["sk_protocol"], 2)?,
        inet_sport: field_offset(btf, "inet_sock", &["inet_sport"], 2)?,
        skc_state: common("skc_state", 1)?,
        tcp_bytes_acked: field_offset(btf, "tcp_sock", &["bytes_acked"], 8)?,
        tcp_bytes_received: field_offset(btf, "tcp_sock", &["bytes_received"], 8)?,
        ..cgroup_offsets(btf)
    })
}

/// The offsets of the `iter/tcp` program, and the bit of `skc_ipv6only` in the byte at
/// [`IterOffsets::skc_ipv6only_byte`].
pub fn resolve_iter(btf: &Btf) -> Result<(IterOffsets, u8), OffsetError> {
    let common = |field: &str, size: usize| field_offset(btf, "sock_common", &[field], size);
    let sock = |field: &str, size: usize| field_offset(btf, "sock", &[field], size);
    let tcp = |field: &str| field_offset(btf, "tcp_sock", &[field], 4);
    let socket_first = field_offset(btf, "socket_alloc", &["socket"], 0)?;
    if socket_first != 0 {
        return Err(OffsetError::Shape {
            strukt: "socket_alloc".into(),
            field: "socket".into(),
            found: format!("at offset {socket_first}"),
            expected: "offset 0".into(),
        });
    }
    let first = [
        field_offset(btf, "tcp_timewait_sock", &["tw_sk"], 0)?,
        field_offset(btf, "tcp_sock", &["inet_conn", "icsk_inet", "sk"], 0)?,
    ];
    if first != [0, 0] {
        return Err(OffsetError::Shape {
            strukt: "tcp_timewait_sock / tcp_sock".into(),
            field: "tw_sk / sk".into(),
            found: format!("at offsets {first:?}"),
            expected: "offset 0".into(),
        });
    }
    let v6only_bit = bitfield_bit(btf, "sock_common", "skc_ipv6only")?;
    Ok((
        IterOffsets {
            skc_daddr: common("skc_daddr", 4)?,
            skc_rcv_saddr: common("skc_rcv_saddr", 4)?,
            skc_dport: common("skc_dport", 2)?,
            skc_num: common("skc_num", 2)?,
            skc_family: common("skc_family", 2)?,
            skc_state: common("skc_state", 1)?,
            skc_bound_dev_if: common("skc_bound_dev_if", 4)?,
            skc_v6_daddr: common("skc_v6_daddr", 16)?,
            skc_v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
            skc_ipv6only_byte: v6only_bit / 8,
            sk_ack_backlog: sock("sk_ack_backlog", 4)?,
            sk_max_ack_backlog: sock("sk_max_ack_backlog", 4)?,
            sk_socket: sock("sk_socket", 8)?,
            socket_file: field_offset(btf, "socket", &["file"], 8)?,
            file_inode: field_offset(btf, "file", &["f_inode"], 8)?,
            inode_ino: field_offset(btf, "inode", &["i_ino"], 8)?,
            socket_ino: field_offset(btf, "socket_alloc", &["vfs_inode"], 0)?
                + field_offset(btf, "inode", &["i_ino"], 8)?,
            tw_substate: field_offset(btf, "inet_timewait_sock", &["tw_substate"], 1)?,
            tcp_rcv_nxt: tcp("rcv_nxt")?,
            tcp_copied_seq: tcp("copied_seq")?,
            tcp_write_seq: tcp("write_seq")?,
            tcp_snd_una: tcp("snd_una")?,
        },
        (v6only_bit % 8) as u8,
    ))
}

/// Bit offset of the one-bit bitfield `name`, a direct member of struct `strukt`.
fn bitfield_bit(btf: &Btf, strukt: &str, name: &str) -> Result<u32, OffsetError> {
    let ty = named_struct(btf, strukt)?;
    let Type::Struct(s) = &ty else {
        return Err(OffsetError::NoStruct {
            name: strukt.into(),
        });
    };
    for member in &s.members {
        if btf.resolve_name(member).unwrap_or_default() == name {
            return match member.bitfield_size() {
                Some(1) => Ok(member.bit_offset()),
                found => Err(OffsetError::Shape {
                    strukt: strukt.into(),
                    field: name.into(),
                    found: format!("a bitfield of {found:?} bits"),
                    expected: "a 1-bit bitfield".into(),
                }),
            };
        }
    }
    Err(OffsetError::NoField {
        strukt: strukt.into(),
        field: name.into(),
    })
}

/// The socket's cgroup: `sk->sk_cgrp_data.cgroup->kn->id`. Since Linux 5.15 `struct
/// sock_cgroup_data` holds `struct cgroup *cgroup` (then `classid`/`prioidx` when
/// CONFIG_CGROUP_NET_CLASSID/PRIO are set, which is why the offsets come from BTF); before,
/// a union packed with v1 net_cls/net_prio data, which a plain load cannot tell apart. There,
/// or without a cgroup at all, the program falls back to the task's cgroup
/// ([`CGROUP_MODE_TASK`]).
fn cgroup_offsets(btf: &Btf) -> SockOffsets {
    let socket = (|| {
        Ok::<_, OffsetError>(SockOffsets {
            sk_cgrp_cgroup: field_offset(btf, "sock", &["sk_cgrp_data", "cgroup"], 8)?,
            cgroup_kn: field_offset(btf, "cgroup", &["kn"], 8)?,
            kn_id: field_offset(btf, "kernfs_node", &["id"], 8)?,
            cgroup_mode: CGROUP_MODE_SOCKET,
            ..SockOffsets::default()
        })
    })();
    socket.unwrap_or(SockOffsets {
        cgroup_mode: CGROUP_MODE_TASK,
        ..SockOffsets::default()
    })
}

/// Byte offset of `path` (a chain of member names, each looked up through anonymous structs
/// and unions) inside struct `strukt`. `size` is the expected byte size of the last member
/// (0: do not check).
fn field_offset(btf: &Btf, strukt: &str, path: &[&str], size: usize) -> Result<u32, OffsetError> {
    let mut ty = named_struct(btf, strukt)?;
    let mut bits = 0u32;
    for (i, field) in path.iter().enumerate() {
        let Some((member_bits, member_ty)) = find_member(btf, &ty, field)? else {
            return Err(OffsetError::NoField {
                strukt: strukt.into(),
                field: path[..=i].join("."),
            });
        };
        bits += member_bits;
        ty = resolve_alias(btf, member_ty)?;
    }
    let found = type_size(&ty);
    if !bits.is_multiple_of(8) || (size != 0 && found != Some(size)) {
        return Err(OffsetError::Shape {
            strukt: strukt.into(),
            field: path.join("."),
            found: format!("{found:?} bytes at bit {bits}"),
            expected: format!("{size} bytes, byte aligned"),
        });
    }
    Ok(bits / 8)
}

fn named_struct(btf: &Btf, name: &str) -> Result<Type, OffsetError> {
    btf.resolve_types_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| OffsetError::NoStruct { name: name.into() })
}

/// Finds `name` among the members of `ty`, descending into anonymous members. Returns the
/// member's bit offset relative to `ty` and its type.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, OffsetError> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return Ok(None);
    };
    for member in &s.members {
        if member.bitfield_size().is_some_and(|b| b != 0) {
            continue;
        }
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let member_ty = btf.resolve_chained_type(member)?;
        if member_name == name {
            return Ok(Some((member.bit_offset(), member_ty)));
        }
        if member_name.is_empty() {
            let inner = resolve_alias(btf, member_ty)?;
            if let Some((bits, t)) = find_member(btf, &inner, name)? {
                return Ok(Some((member.bit_offset() + bits, t)));
            }
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the underlying type.
fn resolve_alias(btf: &Btf, mut ty: Type) -> Result<Type, OffsetError> {
    // Bounded: a malformed BTF must not loop forever.
    for _ in 0..32 {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
    Ok(ty)
}

fn type_size(ty: &Type) -> Option<usize> {
    Some(match ty {
        Type::Int(i) => i.size(),
        Type::Ptr(_) => 8,
        Type::Struct(s) | Type::Union(s) => s.size(),
        Type::Enum(e) => e.size(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reading the kernel's BTF needs no privileges, so this runs in every `cargo test`.
    #[test]
    fn resolves_offsets_from_this_kernel() {
        if !Path::new(VMLINUX_BTF).exists() {
            panic!("{VMLINUX_BTF} is missing: netmon needs a kernel with CONFIG_DEBUG_INFO_BTF");
        }
        let off = from_kernel().expect("resolve offsets");
        // Stable since Linux 4.x: the address pair and port pair open sock_common.
        assert_eq!(off.skc_daddr, 0);
        assert_eq!(off.skc_rcv_saddr, 4);
        assert_eq!(off.skc_dport, 12);
        assert_eq!(off.skc_family, 16);
        assert!(off.skc_v6_daddr > off.skc_family);
        assert!(off.sk_protocol > off.skc_v6_rcv_saddr);
        assert!(off.inet_sport > off.sk_protocol);
        assert_eq!(off.skc_state, 18);
        assert!(off.tcp_bytes_acked > off.inet_sport && off.tcp_bytes_received > off.inet_sport);
        // 6.x: `struct sock_cgroup_data` is a plain struct with the cgroup pointer first.
        assert_eq!(off.cgroup_mode, CGROUP_MODE_SOCKET);
        assert!(off.sk_cgrp_cgroup > off.skc_v6_rcv_saddr, "{off:?}");
        assert!(off.cgroup_kn > 0 && off.kn_id > 0, "{off:?}");
    }
}
