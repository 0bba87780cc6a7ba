package io.croupier.spark;

import java.lang.reflect.Constructor;
import java.lang.reflect.Method;
import org.apache.spark.Aggregator;
import org.apache.spark.Partitioner;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.scheduler.MapStatus$;
import org.apache.spark.serializer.Serializer;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.math.Ordering;

/**
 * The only place that knows about signature differences between Spark 4.x releases. Resolved once by
 * reflection, so one jar runs on all of them:
 * <ul>
 *   <li>MapStatus.apply: (loc, sizes, mapTaskId) up to 4.0, (loc, sizes, mapTaskId, checksumValue)
 *       from 4.1 (4.2 and 4.3 included).</li>
 *   <li>ExternalSorter: (context, aggregator, partitioner, ordering, serializer) up to 4.0, plus
 *       rowBasedChecksums: RowBasedChecksum[] from 4.1.</li>
 *   <li>ShuffleManager.shuffleBlockResolver moved to BlockingShuffleManager in 4.3 (see the
 *       compatibility interface in org.apache.spark.shuffle).</li>
 * </ul>
 */
final class SparkShim {
  private static final Method MAP_STATUS_APPLY;
  private static final Constructor<?> SORTER_CTOR;
  private static final Object EMPTY_ROW_CHECKSUMS;

  static {
    Method apply = null;
    for (Method m : MapStatus$.class.getMethods()) {
      if (m.getName().equals("apply") && m.getParameterCount() >= 3
          && m.getParameterTypes()[0] == BlockManagerId.class && m.getParameterTypes()[1] == long[].class
          && (apply == null || m.getParameterCount() > apply.getParameterCount())) {
        apply = m;
      }
    }
    if (apply == null) {
      throw new IllegalStateException("Croupier: unsupported Spark version: no MapStatus.apply(loc, sizes, mapId)");
    }
    MAP_STATUS_APPLY = apply;

    Constructor<?> ctor = null;
    for (Constructor<?> c : ExternalSorter.class.getConstructors()) {
      Class<?>[] p = c.getParameterTypes();
      if (p.length >= 5 && p[0] == TaskContext.class && (ctor == null || p.length > ctor.getParameterCount())) {
        ctor = c;
      }
    }
    if (ctor == null) {
      throw new IllegalStateException("Croupier: unsupported Spark version: no ExternalSorter constructor");
    }
    SORTER_CTOR = ctor;
    Object empty = null;
    if (ctor.getParameterCount() >= 6) {
      Class<?> arr = ctor.getParameterTypes()[5];
      empty = java.lang.reflect.Array.newInstance(arr.getComponentType(), 0);
    }
    EMPTY_ROW_CHECKSUMS = empty;
  }

  private SparkShim() {}

  static MapStatus mapStatus(BlockManagerId loc, long[] sizes, long mapTaskId) {
    try {
      if (MAP_STATUS_APPLY.getParameterCount() == 3) {
        return (MapStatus) MAP_STATUS_APPLY.invoke(MapStatus$.MODULE$, loc, sizes, mapTaskId);
      }
      // checksumValue 0: no row-based checksum (what Spark uses when the feature is off)
      return (MapStatus) MAP_STATUS_APPLY.invoke(MapStatus$.MODULE$, loc, sizes, mapTaskId, 0L);
    } catch (ReflectiveOperationException e) {
      throw new IllegalStateException("Croupier: cannot build a MapStatus", e);
    }
  }

  @SuppressWarnings({"unchecked", "rawtypes"})
  static <K, V, C> ExternalSorter<K, V, C> newSorter(TaskContext context, Option<Aggregator<K, V, C>> aggregator,
      Option<Partitioner> partitioner, Option<Ordering<K>> ordering, Serializer serializer) {
    try {
      if (SORTER_CTOR.getParameterCount() == 5) {
        return (ExternalSorter) SORTER_CTOR.newInstance(context, aggregator, partitioner, ordering, serializer);
      }
      return (ExternalSorter) SORTER_CTOR.newInstance(context, aggregator, partitioner, ordering, serializer,
          EMPTY_ROW_CHECKSUMS);
    } catch (ReflectiveOperationException e) {
      throw new IllegalStateException("Croupier: cannot build an ExternalSorter", e);
    }
  }
}
