//! Deterministic test data: the bytes of (seed, map, partition) are a pseudo-random stream that does not
//! depend on how it is cut into blocks, so `verify` can regenerate what `load` pushed without knowing the
//! block size.

/// How many bytes of a map's `bytes_per_map` land in `partition` (an even spread; the first
/// `bytes_per_map % partitions` partitions get one byte more).
pub fn partition_bytes(bytes_per_map: u64, partitions: u32, partition: u32) -> u64 {
    let p = u64::from(partitions);
    bytes_per_map / p + u64::from(u64::from(partition) < bytes_per_map % p)
}

/// Independent generator lanes: word `k` of a stream comes from lane `k % LANES`. One lane is a serial
/// chain of shifts and xors (about 1 byte per cycle); four run side by side in a core's pipeline, so
/// generating a load's payload costs a fraction of pushing it.
const LANES: usize = 4;

/// Bytes produced per step: one 8-byte word per lane.
const STEP_BYTES: usize = 8 * LANES;

/// The byte stream of one (seed, map, partition).
pub struct ByteStream {
    lanes: [u64; LANES],
    step: [u8; STEP_BYTES],
    /// Bytes of `step` already handed out.
    used: usize,
}

impl ByteStream {
    pub fn new(seed: u64, map: u32, partition: u32) -> ByteStream {
        let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
        s = splitmix(s ^ u64::from(map).wrapping_mul(0xD1B5_4A32_D192_ED03));
        s = splitmix(s ^ u64::from(partition).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7));
        let mut lanes = [0u64; LANES];
        for (i, lane) in lanes.iter_mut().enumerate() {
            // xorshift needs a non-zero state.
            *lane = splitmix(s ^ (i as u64).wrapping_mul(0xA076_1D64_78BD_642F)) | 1;
        }
        ByteStream {
            lanes,
            step: [0; STEP_BYTES],
            used: STEP_BYTES,
        }
    }

    #[inline]
    fn next_step(&mut self) -> [u8; STEP_BYTES] {
        let mut out = [0u8; STEP_BYTES];
        for (lane, word) in self.lanes.iter_mut().zip(out.chunks_exact_mut(8)) {
            // xorshift64*: fast, and good enough to make every byte position distinct in practice.
            let mut x = *lane;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            *lane = x;
            word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out
    }

    /// Hands the next `n` bytes of the stream to `put`, in pieces of at most [`STEP_BYTES`].
    #[inline]
    fn emit(&mut self, n: usize, mut put: impl FnMut(&[u8])) {
        let left = (STEP_BYTES - self.used).min(n);
        put(&self.step[self.used..self.used + left]);
        self.used += left;
        let mut rest = n - left;
        while rest >= STEP_BYTES {
            put(&self.next_step());
            rest -= STEP_BYTES;
        }
        if rest > 0 {
            self.step = self.next_step();
            put(&self.step[..rest]);
            self.used = rest;
        }
    }

    /// The next `out.len()` bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut at = 0;
        self.emit(out.len(), |piece| {
            out[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        });
    }

    /// The next `n` bytes of the stream in a new buffer, written once (no zeroing first).
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        self.emit(n, |piece| out.extend_from_slice(piece));
        out
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
    fn take_continues_the_stream_as_fill_does() {
        let mut whole = vec![0u8; 1000];
        ByteStream::new(9, 1, 2).fill(&mut whole);
        let mut s = ByteStream::new(9, 1, 2);
        let mut at = 0;
        for n in [0usize, 3, 32, 31, 33, 64, 5, 832] {
            let piece = s.take(n);
            assert_eq!(piece.len(), n);
            assert_eq!(piece[..], whole[at..at + n], "piece of {n} bytes at {at}");
            at += n;
        }
        assert_eq!(at, 1000);
    }

    #[test]
    fn streams_of_other_seeds_and_maps_differ() {
        let take = |seed, map, p| ByteStream::new(seed, map, p).take(256);
        let base = take(1, 0, 0);
        assert_ne!(base, take(2, 0, 0));
        assert_ne!(base, take(1, 1, 0));
        assert_ne!(base, take(1, 0, 1));
        // No lane repeats another: the four words of every step differ.
        for step in base.chunks_exact(STEP_BYTES) {
            let words: std::collections::HashSet<&[u8]> = step.chunks_exact(8).collect();
            assert_eq!(words.len(), LANES);
        }
    }

    #[test]
    fn partition_bytes_add_up() {
        for (b, p) in [(1000u64, 7u32), (5, 10), (1 << 20, 256)] {
            assert_eq!((0..p).map(|i| partition_bytes(b, p, i)).sum::<u64>(), b);
        }
    }
}
