//! An indexed binary min-heap of servers keyed by utilisation, so least-loaded placement is
//! O(1) to find and O(log n) to update instead of a scan over the pool on every call.

/// Position marker for a server that is not in the heap.
const ABSENT: u32 = u32::MAX;

/// Min-heap of `(key, server index)`; ties go to the lower server index so the choice is
/// deterministic. `pos[server]` is the server's slot in `items`, or `ABSENT`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default, Clone)]
pub(crate) struct LoadHeap {
    items: Vec<(u64, u32)>,
    pos: Vec<u32>,
}

impl LoadHeap {
    pub(crate) fn peek(&self) -> Option<u32> {
        self.items.first().map(|&(_, s)| s)
    }

    pub(crate) fn contains(&self, server: u32) -> bool {
        self.pos.get(server as usize).is_some_and(|&p| p != ABSENT)
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn push(&mut self, server: u32, key: u64) {
        if self.contains(server) {
            self.update(server, key);
            return;
        }
        let s = server as usize;
        if self.pos.len() <= s {
            self.pos.resize(s + 1, ABSENT);
        }
        self.items.push((key, server));
        let at = self.items.len() - 1;
        self.pos[s] = at as u32;
        self.sift_up(at);
    }

    pub(crate) fn remove(&mut self, server: u32) {
        let Some(&p) = self.pos.get(server as usize) else {
            return;
        };
        if p == ABSENT {
            return;
        }
        let at = p as usize;
        let last = self.items.len() - 1;
        self.swap(at, last);
        self.items.pop();
        self.pos[server as usize] = ABSENT;
        if at < self.items.len() {
            self.sift_down(at);
            self.sift_up(at);
        }
    }

    /// Changes a member's key; does nothing for a server that is not in the heap.
    pub(crate) fn update(&mut self, server: u32, key: u64) {
        let Some(&p) = self.pos.get(server as usize) else {
            return;
        };
        if p == ABSENT {
            return;
        }
        let at = p as usize;
        let old = self.items[at].0;
        self.items[at].0 = key;
        if key > old {
            self.sift_down(at);
        } else {
            self.sift_up(at);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.items.swap(a, b);
        self.pos[self.items[a].1 as usize] = a as u32;
        self.pos[self.items[b].1 as usize] = b as u32;
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.items[at] < self.items[parent] {
                self.swap(at, parent);
                at = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        let n = self.items.len();
        loop {
            let left = 2 * at + 1;
            if left >= n {
                break;
            }
            let right = left + 1;
            let child = if right < n && self.items[right] < self.items[left] {
                right
            } else {
                left
            };
            if self.items[child] < self.items[at] {
                self.swap(at, child);
                at = child;
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_minimum_on_top_through_updates_and_removals() {
        let mut h = LoadHeap::default();
        for (s, k) in [(0, 50), (1, 10), (2, 30), (3, 10), (4, 70)] {
            h.push(s, k);
        }
        assert_eq!(h.peek(), Some(1), "tie on 10 goes to the lower index");
        h.update(1, 100);
        assert_eq!(h.peek(), Some(3));
        h.remove(3);
        assert_eq!(h.peek(), Some(2));
        h.update(4, 0);
        assert_eq!(h.peek(), Some(4));
        h.remove(4);
        h.remove(4);
        assert_eq!(h.len(), 3);
        assert!(!h.contains(4));
        let mut order = Vec::new();
        while let Some(s) = h.peek() {
            order.push(s);
            h.remove(s);
        }
        assert_eq!(order, vec![2, 0, 1]);
    }
}
