//! Free TCP ports on 127.0.0.1, and who holds one.
//!
//! A port found free can be taken by another process (another test binary's emulator)
//! before the program meant for it binds it; whoever starts a server on a port from
//! [`free_port`] must check with [`listens`] that its own process got it, and try
//! another port otherwise (as [`crate::emulators`] does).

use std::collections::HashSet;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Whether 127.0.0.1:`port` accepts connections now.
pub fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Wait up to `timeout` until 127.0.0.1:`port` accepts connections; whether it did.
pub fn wait_until_open(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if answers(port) {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` holds the socket listening on TCP `port` (IPv4 or IPv6), read
/// from `/proc/net/tcp*` and `/proc/PID/fd`.
pub fn listens(pid: u32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local.rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok());
            // 0A: LISTEN.
            if p == Some(port) && *state == "0A" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).map(|l| inodes.contains(l.to_string_lossy().as_ref())).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_listens_on_the_port_it_bound_and_not_on_another() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens(std::process::id(), port));
        assert!(answers(port));
        drop(listener);
        let other = free_port().unwrap();
        assert!(!listens(std::process::id(), other));
    }
}
