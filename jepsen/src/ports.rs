//! Ports for servers that tests and benchmarks start as separate processes: they must be free
//! when the process binds them, some time after the harness picked them.
//!
//! Binding port 0, reading the port and closing the listener (the usual trick) hands out a port
//! from the kernel's ephemeral range, which every outgoing connection also draws its local port
//! from: between the pick and the member's bind, a client's or a peer's connect may take it, and
//! the member exits with "address in use". A port below that range is never given to a connect,
//! so a pick stays free unless another listener takes it.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use anyhow::{Result, bail};
use rand::Rng;

/// Lowest port handed out: above the well-known and most registered ports in common use.
const LOWEST_PORT: u16 = 10_000;
/// Linux's default ephemeral range starts here, used when the kernel's setting is unreadable.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;
/// Random picks tried before giving up (each one bound to check it is free).
const ATTEMPTS: usize = 1_000;

/// Ports this process handed out already: not handed out again, even once a server has released
/// them, so that two servers started by one test binary never race for one port.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port outside the kernel's ephemeral range that was free a moment ago and has not
/// been handed out by this process before.
pub fn free_port() -> Result<u16> {
    let (low, high) = candidate_range();
    let mut rng = rand::thread_rng();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..ATTEMPTS {
        let port = rng.gen_range(low..high);
        if handed_out.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.insert(port);
        return Ok(port);
    }
    bail!("no free loopback port in {low}..{high} after {ATTEMPTS} tries")
}

/// Ports below the ephemeral range; if that range starts too low to leave room, ports above it.
fn candidate_range() -> (u16, u16) {
    let (ephemeral_low, ephemeral_high) = ephemeral_range().unwrap_or((DEFAULT_EPHEMERAL_LOW, 60_999));
    if ephemeral_low >= LOWEST_PORT + 1_000 {
        (LOWEST_PORT, ephemeral_low)
    } else {
        (ephemeral_high.saturating_add(1).max(LOWEST_PORT), u16::MAX)
    }
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u16>().ok());
    Some((fields.next()??, fields.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_distinct_and_bindable() {
        let (ephemeral_low, ephemeral_high) = ephemeral_range().unwrap_or((DEFAULT_EPHEMERAL_LOW, 60_999));
        let mut seen = HashSet::new();
        for _ in 0..500 {
            let port = free_port().unwrap();
            assert!(!(ephemeral_low..=ephemeral_high).contains(&port), "{port} is in the ephemeral range");
            assert!(seen.insert(port), "{port} handed out twice");
        }
        let port = free_port().unwrap();
        TcpListener::bind(("127.0.0.1", port)).expect("a handed-out port can be bound");
    }
}
