//! Host names for `snapshot -r`, found as ss -r finds them: a reverse lookup through the C
//! library (getnameinfo, so /etc/hosts then DNS), falling back to the number.

use std::{collections::HashMap, net::IpAddr};

/// Names of `addrs` that have one (unspecified addresses are never looked up).
pub fn resolve(addrs: impl IntoIterator<Item = IpAddr>) -> HashMap<IpAddr, String> {
    let mut names = HashMap::new();
    for ip in addrs {
        if ip.is_unspecified() || names.contains_key(&ip) {
            continue;
        }
        if let Some(name) = lookup(ip) {
            names.insert(ip, name);
        }
    }
    names
}

fn lookup(ip: IpAddr) -> Option<String> {
    // ss looks a v4-mapped address up as the IPv4 address it carries (lib/utils.c
    // resolve_address).
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let sa = socket2_addr(ip);
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `sa` is a valid sockaddr of the given length; `host` is a writable buffer of the
    // length passed; no service buffer is asked for.
    let rc = unsafe {
        libc::getnameinfo(
            (&raw const sa.0).cast(),
            sa.1,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn socket2_addr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_is_never_looked_up() {
        let names = resolve(["0.0.0.0".parse().unwrap(), "::".parse().unwrap()]);
        assert!(names.is_empty());
    }
}
