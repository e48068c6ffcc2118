//! Traffic generators for the end-to-end tests.

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::netns::{NetNs, in_netns};

/// Sends numbered UDP datagrams from `ns` to `dst:port` every 2 ms until stopped.
pub struct Stream {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u32>>,
}

impl Stream {
    pub fn start(ns: &NetNs, dst: &'static str, port: u16) -> Stream {
        let sock = in_netns(ns, || {
            UdpSocket::bind(("0.0.0.0", 0)).expect("stream socket")
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut seq = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let mut payload = seq.to_be_bytes().to_vec();
                payload.resize(64, 0xab);
                sock.send_to(&payload, (dst, port)).expect("stream send");
                seq += 1;
                thread::sleep(Duration::from_millis(2));
            }
            seq
        });
        Stream {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map_or(0, |h| h.join().expect("stream thread"))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The sequence number a Stream datagram carries, from a copy's inner frame (IPv4, UDP).
pub fn stream_seq(inner: &[u8]) -> Option<u32> {
    let ihl = usize::from(inner.get(14)? & 0x0f) * 4;
    let at = 14 + ihl + 8;
    Some(u32::from_be_bytes(inner.get(at..at + 4)?.try_into().ok()?))
}
