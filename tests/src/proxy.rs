//! A TCP proxy to a real endpoint that can be told to hang: every connection, open or new,
//! stops moving bytes (nothing is closed, nothing answered) — an RPC endpoint that stopped
//! responding, as clients meet it in the wild.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A running proxy; `hang(true)` freezes it, `hang(false)` lets bytes move again.
pub struct HangingProxy {
    pub addr: std::net::SocketAddr,
    hanging: Arc<AtomicBool>,
}

impl HangingProxy {
    /// Proxies connections to `target` (`host:port`), from a port of its own.
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hanging = Arc::new(AtomicBool::new(false));
        let (target, flag) = (target.to_owned(), hanging.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (from, to, flag) =
                        (from.try_clone().unwrap(), to.try_clone().unwrap(), flag.clone());
                    std::thread::spawn(move || pipe(from, to, &flag));
                }
            }
        });
        Self { addr, hanging }
    }

    pub fn hang(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while not hanging; while hanging, holds whatever arrives.
fn pipe(mut from: TcpStream, mut to: TcpStream, hanging: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if hanging.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Bytes read just as the hang began are held until it ends.
                while hanging.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
