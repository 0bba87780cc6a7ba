package io.croupier.spark.client;

import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * Rendezvous (highest random weight) hashing of partitions onto servers, with bounded load.
 *
 * <p>Every process that knows the same ordered-or-not server list computes the same owner for a
 * partition: the score only depends on the server's address string, the shuffle id and the partition
 * id, never on JVM state (no {@code Object.hashCode}, no random seed).
 *
 * <p>{@link #assign} gives each partition, in partition order, to the highest-scoring server that still
 * has room: {@code floor(partitions / servers)} partitions each, and one more for the first
 * {@code partitions % servers} servers that reach that floor. Plain highest-score placement is
 * only balanced on average: 8 partitions on 2 servers all land on one server once in 128 shuffles,
 * and a shuffle with few partitions would then run at one server's speed. With the bound every server
 * owns {@code floor} or {@code ceil} of {@code partitions / servers}. Most partitions still go to
 * their first choice, so adding a server moves about {@code 1/n} of them. The shuffle id salts the
 * scores, so shuffles with fewer partitions than servers do not all pick the same servers.
 */
public final class Rendezvous {
  private final long[] seeds;

  public Rendezvous(List<String> servers) {
    if (servers.isEmpty()) {
      throw new IllegalArgumentException("Rendezvous hashing needs at least one server");
    }
    seeds = new long[servers.size()];
    for (int i = 0; i < seeds.length; i++) {
      seeds[i] = fnv1a64(servers.get(i));
    }
  }

  public int numServers() {
    return seeds.length;
  }

  /**
   * Owner (index into the server list) of every partition in [0, numPartitions) of shuffle {@code
   * shuffleId}; every server owns {@code floor} or {@code ceil} of {@code numPartitions / numServers()}.
   */
  public int[] assign(int shuffleId, int numPartitions) {
    if (numPartitions < 0) {
      throw new IllegalArgumentException("numPartitions must be >= 0, got " + numPartitions);
    }
    int floor = numPartitions / seeds.length;
    int extra = numPartitions % seeds.length; // servers that may own floor + 1
    int[] load = new int[seeds.length];
    int[] owner = new int[numPartitions];
    for (int p = 0; p < numPartitions; p++) {
      int best = -1;
      long bestScore = 0;
      for (int i = 0; i < seeds.length; i++) {
        if (load[i] > floor || (load[i] == floor && extra == 0)) {
          continue;
        }
        long score = score(seeds[i], shuffleId, p);
        // Ties are practically impossible with 64-bit scores; break them by index for determinism.
        if (best < 0 || score > bestScore) {
          bestScore = score;
          best = i;
        }
      }
      // floor * servers + extra == partitions, so some server always has room.
      assert best >= 0;
      if (load[best] == floor) {
        extra--;
      }
      load[best]++;
      owner[p] = best;
    }
    return owner;
  }

  static long score(long seed, int shuffleId, int partition) {
    long key = ((long) shuffleId << 32) | (partition & 0xffffffffL);
    return mix64(seed ^ mix64(0x9E3779B97F4A7C15L * (key + 1L)));
  }

  /** SplitMix64 finalizer. */
  static long mix64(long z) {
    z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
    z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
    return z ^ (z >>> 31);
  }

  static long fnv1a64(String s) {
    long h = 0xcbf29ce484222325L;
    for (byte b : s.getBytes(StandardCharsets.UTF_8)) {
      h ^= (b & 0xff);
      h *= 0x100000001b3L;
    }
    return h;
  }
}
