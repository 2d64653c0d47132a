//! A map of work in flight by key: the first caller for a key starts the
//! work and publishes its progress; later callers for the same key watch
//! the same progress instead of starting the work again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// Work in flight, keyed by `K`, with progress `V`.
pub struct SingleFlight<K, V> {
    map: Mutex<HashMap<K, watch::Receiver<V>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// What [`SingleFlight::join`] hands back.
pub enum Joined<V> {
    /// This caller does the work: publish progress on the sender, then
    /// call [`SingleFlight::finish`].
    Leader(watch::Sender<V>, watch::Receiver<V>),
    /// Someone else does it: watch.
    Follower(watch::Receiver<V>),
}

impl<K: Eq + Hash + Clone, V> SingleFlight<K, V> {
    /// Joins the work on `key`, or starts it with progress `initial`.
    pub fn join(&self, key: &K, initial: V) -> Joined<V> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = map.get(key) {
            return Joined::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(initial);
        map.insert(key.clone(), rx.clone());
        Joined::Leader(tx, rx)
    }

    /// The work on `key` is over: later callers start afresh.
    pub fn finish(&self, key: &K) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Keys in flight.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_caller_follows_the_first() {
        let sf: SingleFlight<String, u8> = SingleFlight::default();
        let Joined::Leader(tx, _) = sf.join(&"k".to_string(), 0) else {
            panic!("first caller must lead");
        };
        let Joined::Follower(rx) = sf.join(&"k".to_string(), 0) else {
            panic!("second caller must follow");
        };
        tx.send_replace(7);
        assert_eq!(*rx.borrow(), 7);
        sf.finish(&"k".to_string());
        assert!(sf.is_empty());
        assert!(matches!(sf.join(&"k".to_string(), 0), Joined::Leader(..)));
    }
}
