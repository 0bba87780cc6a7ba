//! Deterministic test data: the bytes of (seed, map, partition) are a pseudo-random stream that does not
//! depend on how it is cut into blocks, so `verify` can regenerate what `load` pushed without knowing the
//! block size.

/// How many bytes of a map's `bytes_per_map` land in `partition` (an even spread; the first
/// `bytes_per_map % partitions` partitions get one byte more).
pub fn partition_bytes(bytes_per_map: u64, partitions: u32, partition: u32) -> u64 {
    let p = u64::from(partitions);
    bytes_per_map / p + u64::from(u64::from(partition) < bytes_per_map % p)
}

/// The byte stream of one (seed, map, partition).
pub struct ByteStream {
    state: u64,
    word: [u8; 8],
    /// Bytes of `word` already handed out.
    used: usize,
}

impl ByteStream {
    pub fn new(seed: u64, map: u32, partition: u32) -> ByteStream {
        let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
        s = splitmix(s ^ u64::from(map).wrapping_mul(0xD1B5_4A32_D192_ED03));
        s = splitmix(s ^ u64::from(partition).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7));
        ByteStream {
            state: s | 1,
            word: [0; 8],
            used: 8,
        }
    }

    #[inline]
    fn next_word(&mut self) -> u64 {
        // xorshift64*: fast, and good enough to make every byte position distinct in practice.
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while self.used < 8 && i < out.len() {
            out[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let rest = &mut out[i..];
        let mut chunks = rest.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word().to_le_bytes();
            tail.copy_from_slice(&self.word[..tail.len()]);
            self.used = tail.len();
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_does_not_depend_on_how_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        ByteStream::new(7, 3, 5).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut s = ByteStream::new(7, 3, 5);
        let mut at = 0;
        for n in [1usize, 7, 8, 9, 13, 100, 862] {
            s.fill(&mut pieces[at..at + n]);
            at += n;
        }
        assert_eq!(at, 1000);
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        ByteStream::new(7, 3, 6).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn partition_bytes_add_up() {
        for (b, p) in [(1000u64, 7u32), (5, 10), (1 << 20, 256)] {
            assert_eq!((0..p).map(|i| partition_bytes(b, p, i)).sum::<u64>(), b);
        }
    }
}
