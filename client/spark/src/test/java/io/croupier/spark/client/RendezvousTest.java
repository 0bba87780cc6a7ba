package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;

class RendezvousTest {
  private static final List<String> THREE = List.of("10.0.0.1:19870", "10.0.0.2:19870", "10.0.0.3:19870");

  @Test
  void deterministicAcrossInstancesAndListOrder() {
    int[] a = new Rendezvous(THREE).assign(5000);
    int[] b = new Rendezvous(THREE).assign(5000);
    assertArrayEquals(a, b);
    // The owner is a function of the address, not of the position in the list.
    List<String> reversed = List.of(THREE.get(2), THREE.get(1), THREE.get(0));
    int[] c = new Rendezvous(reversed).assign(5000);
    for (int p = 0; p < 5000; p++) {
      assertEquals(THREE.get(a[p]), reversed.get(c[p]));
    }
  }

  @Test
  void balanced() {
    int n = 30000;
    int[] owner = new Rendezvous(THREE).assign(n);
    int[] count = new int[3];
    for (int o : owner) {
      count[o]++;
    }
    for (int c : count) {
      assertTrue(c > n / 3 * 0.9 && c < n / 3 * 1.1, "unbalanced: " + c);
    }
  }

  @Test
  void addingAServerOnlyMovesPartitionsToIt() {
    int n = 20000;
    int[] before = new Rendezvous(THREE).assign(n);
    List<String> four = List.of(THREE.get(0), THREE.get(1), THREE.get(2), "10.0.0.4:19870");
    int[] after = new Rendezvous(four).assign(n);
    int moved = 0;
    for (int p = 0; p < n; p++) {
      if (after[p] != before[p]) {
        assertEquals(3, after[p], "partition " + p + " moved between old servers");
        moved++;
      }
    }
    assertTrue(moved > n / 4 * 0.9 && moved < n / 4 * 1.1, "moved " + moved);
  }

  @Test
  void singleServerOwnsEverything() {
    int[] owner = new Rendezvous(List.of("127.0.0.1:1")).assign(100);
    for (int o : owner) {
      assertEquals(0, o);
    }
  }

  @Test
  void fixedVectors() {
    // Pinned so that any change of the hash (which would break running apps mixing versions) is noticed.
    int[] owner = new Rendezvous(List.of("127.0.0.1:19870", "127.0.0.1:19872")).assign(8);
    int[] again = new Rendezvous(List.of("127.0.0.1:19870", "127.0.0.1:19872")).assign(8);
    assertArrayEquals(owner, again);
    assertEquals(0xcbf29ce484222325L, Rendezvous.fnv1a64(""));
    assertEquals(0xaf63dc4c8601ec8cL, Rendezvous.fnv1a64("a"));
  }
}
