package io.croupier.spark.client;

import java.io.Serializable;

/** Tunables of the client side (see the README for the matching spark.croupier.* keys). */
public final class ClientConf implements Serializable {
  private static final long serialVersionUID = 1L;

  /**
   * Target size of one block: a partition's stream is closed at the first record boundary past it. Below
   * 512 KiB (with room for a record and the codec's last frame) so that a reader that copies blocks
   * ({@link #fetchZeroCopy} off: the protobuf parser allocates one array per block) does not make "humongous"
   * objects for G1, which a 1 MiB block did: allocated in the old generation, and triggering collections and
   * marking cycles of its own.
   */
  public long blockBytes = 448L << 10;
  /** Hard limit of one block (header included); bigger records are split into CONTINUED fragments. */
  public int maxBlockBytes = 4 << 20;
  /** A batch is sent once it holds this many bytes. */
  public long batchBytes = 2L << 20;
  /** A batch never exceeds this (server max message is about 8 MiB). */
  public long maxBatchBytes = 6L << 20;
  /**
   * A map attempt that pushed nothing to its leader server before finishing sends what it has left for
   * that server (less than one batch) with its commit: one call instead of a push stream and a commit.
   */
  public boolean inlineCommit = true;
  /** Unacknowledged batches per push stream. */
  public int maxInFlightBatches = 4;
  /** How long a pusher waits for an ack before failing the task. */
  public long ackTimeoutMs = 120_000;
  /** How long a call waits for a channel that is not connected (yet or any more) before trying anyway. */
  public long connectTimeoutMs = 5_000;
  /** Deadline of unary calls (register, commit, unregister, heartbeat, status). */
  public long rpcTimeoutMs = 60_000;
  /**
   * chunk_bytes_max of Fetch requests. A little under 4 MiB so that a whole FetchResponse stays within 4 MiB,
   * the largest message grpc-java's protobuf marshaller parses from one reused buffer (bigger ones go through
   * its slower stream parser).
   */
  public int fetchChunkBytes = (4 << 20) - (64 << 10);
  /** Largest message the client accepts. */
  public int maxInboundMessageBytes = 64 << 20;
  /**
   * Largest HTTP/2 DATA frame the client lets the server send (SETTINGS_MAX_FRAME_SIZE, 16 KiB ..= 16 MiB;
   * plaintext connections only, see {@link FrameSizeNegotiator}). 16 KiB (the HTTP/2 default) sends nothing.
   */
  public int http2MaxFrameBytes = 1 << 20;
  /** HTTP/2 flow-control window of the client. */
  public int flowControlWindowBytes = 8 << 20;
  /**
   * Without map-side combine and with at most this many partitions, records are serialized straight
   * into per-partition streams and pushed while the map runs, instead of being grouped by Spark's
   * ExternalSorter first.
   */
  public int bypassThreshold = 200;
  /** Heartbeat period of the driver (capped at a third of the lease). */
  public long heartbeatIntervalMs = 10_000;
  /** A fetch stream that delivers nothing for this long fails. */
  public long fetchTimeoutMs = 120_000;
  /** FetchResponse messages read ahead per fetch stream (all servers of a reduce task stream at once). */
  public int fetchPrefetchChunks = 2;
  /**
   * Parse fetched blocks over the transport's receive buffers instead of copying them twice (grpc's
   * protobuf marshaller copies each message into an array, then each block into one of its own); see
   * {@link ReceivedFetch}. Off only to compare, or to rule it out.
   */
  public boolean fetchZeroCopy = true;
}
