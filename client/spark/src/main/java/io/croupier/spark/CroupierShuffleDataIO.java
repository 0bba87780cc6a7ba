package io.croupier.spark;

import java.util.Collections;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.api.ShuffleDataIO;
import org.apache.spark.shuffle.api.ShuffleDriverComponents;
import org.apache.spark.shuffle.api.ShuffleExecutorComponents;
import org.apache.spark.shuffle.api.ShuffleMapOutputWriter;

/**
 * The ShuffleDataIO for {@code spark.shuffle.sort.io.plugin.class}. Its driver components tell the
 * DAG scheduler that shuffle data is stored reliably (on the Croupier servers), so map outputs are not
 * recomputed when the executor that wrote them is lost; they also clean up shuffles and the app.
 * The executor components are never used: CroupierShuffleManager writes through its own writer.
 */
public class CroupierShuffleDataIO implements ShuffleDataIO {
  private final SparkConf conf;

  public CroupierShuffleDataIO(SparkConf conf) {
    this.conf = conf;
  }

  @Override
  public ShuffleExecutorComponents executor() {
    return new ShuffleExecutorComponents() {
      @Override
      public void initializeExecutor(String appId, String execId, Map<String, String> extraConfigs) {}

      @Override
      public ShuffleMapOutputWriter createMapOutputWriter(int shuffleId, long mapTaskId, int numPartitions) {
        throw new UnsupportedOperationException(
            "CroupierShuffleDataIO only works with spark.shuffle.manager=" + CroupierShuffleManager.class.getName());
      }
    };
  }

  @Override
  public ShuffleDriverComponents driver() {
    return new Driver();
  }

  /** Driver components: reliable storage, shuffle and application cleanup. */
  public static class Driver implements ShuffleDriverComponents {
    @Override
    public Map<String, String> initializeApplication() {
      return Collections.emptyMap();
    }

    @Override
    public void cleanupApplication() {
      CroupierDriver d = CroupierDriver.peek();
      if (d != null) {
        d.stop();
      }
    }

    @Override
    public void removeShuffle(int shuffleId, boolean blocking) {
      CroupierDriver d = CroupierDriver.peek();
      if (d != null) {
        d.unregisterShuffle(shuffleId);
      }
    }

    @Override
    public boolean supportsReliableStorage() {
      return true;
    }
  }
}
