//! The connection id (`fd`) that is also a login QR code's scene value.
//!
//! Layout: `node * 2^27 + r` with `node` the gateway's `--node-id` (0–15)
//! and `r` random in `2^20 ≤ r < 2^27`. So an fd fits WeChat's signed
//! 32-bit `scene_id`, names the gateway node that holds the page, and a
//! scene below 2^20 (WeChat's permanent codes use 1–100,000) is never a
//! login: it belongs to the account's own handler.

use std::num::NonZeroU32;

/// Bits of the random part.
pub const NODE_SHIFT: u32 = 27;
/// The smallest random part (and so the smallest fd of node 0).
pub const MIN_RANDOM: u32 = 1 << 20;
/// The largest `--node-id`.
pub const MAX_NODE_ID: u8 = 15;

/// A login fd: non-zero, in the layout above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fd(NonZeroU32);

impl Fd {
    /// The fd of `node` with random part `r`, if both are in range.
    pub fn new(node: u8, r: u32) -> Option<Fd> {
        if node > MAX_NODE_ID || !(MIN_RANDOM..(1 << NODE_SHIFT)).contains(&r) {
            return None;
        }
        NonZeroU32::new((u32::from(node) << NODE_SHIFT) | r).map(Fd)
    }

    /// A scene value read from WeChat (or a bus line), if it is a login fd.
    pub fn from_scene(scene: u32) -> Option<Fd> {
        let node = scene >> NODE_SHIFT;
        let r = scene & ((1 << NODE_SHIFT) - 1);
        Fd::new(u8::try_from(node).ok()?, r)
    }

    /// A random fd of `node` (`None` for a node out of range).
    pub fn random(node: u8) -> Option<Fd> {
        let span = (1u32 << NODE_SHIFT) - MIN_RANDOM;
        Fd::new(node, MIN_RANDOM + rand_below(span))
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The gateway node that holds the page.
    pub fn node(self) -> u8 {
        // At most MAX_NODE_ID by construction.
        (self.0.get() >> NODE_SHIFT) as u8
    }
}

impl std::fmt::Display for Fd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn rand_below(n: u32) -> u32 {
    use rand::Rng;
    rand::rng().random_range(0..n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(Fd::from_scene(100), None, "a permanent code's scene");
        assert_eq!(Fd::from_scene(MIN_RANDOM - 1), None);
        let fd = Fd::from_scene(MIN_RANDOM).unwrap();
        assert_eq!((fd.node(), fd.get()), (0, MIN_RANDOM));
        let top = Fd::new(15, (1 << NODE_SHIFT) - 1).unwrap();
        assert_eq!(top.get(), i32::MAX as u32, "fits a signed 32-bit scene_id");
        assert_eq!(Fd::from_scene(top.get()), Some(top));
        assert_eq!(Fd::from_scene(u32::MAX), None, "node 31 does not exist");
        assert_eq!(
            Fd::from_scene((3 << NODE_SHIFT) + 5),
            None,
            "node 3, r too small"
        );
        assert_eq!(Fd::new(16, MIN_RANDOM), None);
        for node in [0, 7, 15] {
            for _ in 0..1000 {
                let fd = Fd::random(node).unwrap();
                assert_eq!(fd.node(), node);
                assert_eq!(Fd::from_scene(fd.get()), Some(fd));
            }
        }
    }
}
