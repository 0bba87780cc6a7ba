package io.croupier.spark.client;

import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * Rendezvous (highest random weight) hashing of partitions onto servers.
 *
 * <p>Every process that knows the same ordered-or-not server list computes the same owner for a
 * partition: the score only depends on the server's address string and the partition id, never on
 * JVM state (no {@code Object.hashCode}, no random seed). Removing a server only moves the
 * partitions it owned; adding one only takes about 1/n of the partitions.
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

  /** Index (into the server list) of the server that owns {@code partition}. */
  public int serverOf(int partition) {
    int best = 0;
    long bestScore = Long.MIN_VALUE;
    for (int i = 0; i < seeds.length; i++) {
      long score = score(seeds[i], partition);
      // Ties are practically impossible with 64-bit scores; break them by index for determinism.
      if (score > bestScore) {
        bestScore = score;
        best = i;
      }
    }
    return best;
  }

  /** Owner of every partition in [0, numPartitions). */
  public int[] assign(int numPartitions) {
    int[] owner = new int[numPartitions];
    for (int p = 0; p < numPartitions; p++) {
      owner[p] = serverOf(p);
    }
    return owner;
  }

  static long score(long seed, int partition) {
    return mix64(seed ^ mix64(0x9E3779B97F4A7C15L * (partition + 1L)));
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
