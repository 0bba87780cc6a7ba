package org.apache.spark.shuffle;

/**
 * Compatibility copy of the interface Spark 4.3 added (a ShuffleManager that serves blocks through a
 * ShuffleBlockResolver). Spark 4.3 refuses a shuffle manager that does not implement it; Spark 4.2 and
 * earlier do not have it.
 *
 * <p>This class is only used where Spark does not define it: the plugin jar is loaded by a
 * parent-first class loader (--jars / spark.jars), so on Spark 4.3+ Spark's own interface wins and
 * this copy is never loaded. Do not run the plugin with spark.{driver,executor}.userClassPathFirst=true
 * on Spark 4.3+.
 */
public interface BlockingShuffleManager extends ShuffleManager {
  ShuffleBlockResolver shuffleBlockResolver();
}
