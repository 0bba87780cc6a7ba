package io.croupier.spark;

import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.shuffle.MergedBlockMeta;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.ShuffleMergedBlockId;
import scala.Option;
import scala.collection.immutable.Seq;

/** Croupier shuffle blocks live on Croupier servers, never in a block manager: nothing to resolve. */
final class NoOpShuffleBlockResolver implements ShuffleBlockResolver {
  @Override
  public ManagedBuffer getBlockData(BlockId blockId, Option<String[]> dirs) {
    throw new UnsupportedOperationException(
        "Croupier shuffle blocks are served by the Croupier servers, not by executors: " + blockId);
  }

  @Override
  public Seq<ManagedBuffer> getMergedBlockData(ShuffleMergedBlockId blockId, Option<String[]> dirs) {
    throw new UnsupportedOperationException("push-based shuffle is not used with Croupier: " + blockId);
  }

  @Override
  public MergedBlockMeta getMergedBlockMeta(ShuffleMergedBlockId blockId, Option<String[]> dirs) {
    throw new UnsupportedOperationException("push-based shuffle is not used with Croupier: " + blockId);
  }

  @Override
  public void stop() {}
}
