package io.croupier.spark.client;

import io.croupier.proto.v1.Block;
import java.io.IOException;
import java.util.List;

/** Where a map attempt's batches for one server go (a Push stream, or a fake in tests). */
public interface BatchSink {
  /** Sends one batch; may block while the in-flight window is full. */
  void send(List<Block> blocks) throws IOException;

  /** Waits until every sent batch is acknowledged, then ends the stream. */
  void finish() throws IOException;

  /** Cancels the stream; nothing more is sent. Never throws. */
  void abort(String reason);

  /** True once the server said another attempt of the map is committed (pushing more is useless). */
  boolean mapCommittedElsewhere();
}
