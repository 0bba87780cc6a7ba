package io.croupier.spark;

import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import scala.Product2;
import scala.Tuple2;
import scala.collection.AbstractIterator;
import scala.collection.Iterator;

/**
 * Copies Spark SQL rows ({@code org.apache.spark.sql.catalyst.InternalRow}) before the writer keeps them.
 *
 * <p>Because {@link CroupierShuffleManager} is a {@code SortShuffleManager}, Spark SQL hands the writer its
 * reused row buffers without copying them. The streaming path serializes each record before pulling the next
 * one, so it needs no copy; a path that holds records (Spark's ExternalSorter) must copy every row, exactly
 * as Spark SQL would have done. Spark SQL is not a compile-time dependency of the plugin, so the row class
 * and its {@code copy()} are found by reflection, from the first record's own class.
 */
final class RowCopier {
  private static final String INTERNAL_ROW = "org.apache.spark.sql.catalyst.InternalRow";

  private RowCopier() {}

  /** {@code copy()} of {@code InternalRow} if {@code o} is one, else null. */
  private static MethodHandle copyOf(Object o) {
    if (o == null) {
      return null;
    }
    for (Class<?> c = o.getClass(); c != null; c = c.getSuperclass()) {
      if (c.getName().equals(INTERNAL_ROW)) {
        try {
          return MethodHandles.publicLookup().findVirtual(c, "copy", MethodType.methodType(c));
        } catch (ReflectiveOperationException e) {
          throw new IllegalStateException("Croupier: cannot find " + INTERNAL_ROW + ".copy()", e);
        }
      }
    }
    return null;
  }

  /**
   * The records with every InternalRow key or value copied. Whether keys / values are rows is decided on the
   * first record (a shuffle's records all have the same shape); other records pass through unchanged.
   */
  static <K, V> Iterator<Product2<K, V>> copying(Iterator<Product2<K, V>> records) {
    return new AbstractIterator<Product2<K, V>>() {
      private boolean resolved;
      private MethodHandle keyCopy;
      private MethodHandle valueCopy;

      @Override
      public boolean hasNext() {
        return records.hasNext();
      }

      @Override
      @SuppressWarnings("unchecked")
      public Product2<K, V> next() {
        Product2<K, V> r = records.next();
        if (!resolved) {
          resolved = true;
          keyCopy = copyOf(r._1());
          valueCopy = copyOf(r._2());
        }
        if (keyCopy == null && valueCopy == null) {
          return r;
        }
        try {
          K k = r._1();
          V v = r._2();
          if (keyCopy != null && k != null) {
            k = (K) keyCopy.invoke(k);
          }
          if (valueCopy != null && v != null) {
            v = (V) valueCopy.invoke(v);
          }
          return new Tuple2<>(k, v);
        } catch (RuntimeException | Error e) {
          throw e;
        } catch (Throwable t) {
          throw new IllegalStateException("Croupier: copying a row failed", t);
        }
      }
    };
  }
}
